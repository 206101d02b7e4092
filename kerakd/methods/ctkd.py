"""`ctkd`: Li et al., "Curriculum Temperature for Knowledge Distillation" (AAAI 2023)."""

import math

import keras
from keras import ops

from kerakd import losses
from kerakd.methods import logit_standardization as ls
from kerakd.methods.base import (Method, MethodOutput, check_non_negative, check_positive,
                                 renamed_arguments)
from kerakd.methods.dkd import dkd_losses
from kerakd.methods.registry import register

HOSTS = ("kd", "dkd")
# The weights each host reads; the other host's must stay unset.
_HOST_WEIGHTS = {"kd": ("kd_weight",), "dkd": ("tckd_weight", "nckd_weight")}


def gradient_reversal(x, scale):
    """The identity in the forward pass; the backward pass multiplies the
    incoming gradient by `-scale`.

    Written as `sg(x) - scale * (x - sg(x))` (`sg` = stop-gradient): the
    bracket is exactly 0, so the forward value is `x` bit for bit, and its
    derivative is `-scale`.

    Args:
        x: a float tensor.
        scale: the reversal strength `lambda >= 0` (a number or a scalar
            tensor; it gets no gradient).

    Example:

    >>> import tensorflow as tf
    >>> from kerakd.methods.ctkd import gradient_reversal
    >>> theta = tf.Variable(2.0)
    >>> with tf.GradientTape() as tape:
    ...     y = gradient_reversal(theta, 0.5)
    >>> float(y), float(tape.gradient(y, theta))   # the value of theta, gradient -0.5
    (2.0, -0.5)
    """
    held = ops.stop_gradient(x)
    return held - ops.stop_gradient(scale) * (x - held)


def curriculum_lambda(epoch, decay_epochs):
    """`(1 - cos(pi * min(epoch, E) / E)) / 2` for the 1-based `epoch`, `E = decay_epochs`.

    Rises from 0 (epoch 0) to 1 (epoch `E` and later) along a half cosine;
    `decay_epochs=0` gives 1 from the start.

    Example:

    >>> from kerakd.methods.ctkd import curriculum_lambda
    >>> [round(curriculum_lambda(epoch, 10), 3) for epoch in (0, 5, 10, 20)]
    [0.0, 0.5, 1.0, 1.0]
    """
    if not decay_epochs:
        return 1.0
    return (1.0 - math.cos(math.pi * min(epoch, decay_epochs) / decay_epochs)) / 2.0


class CurriculumLambda(keras.callbacks.Callback):
    """Sets CTKD's reversal strength to `curriculum_lambda(epoch)` before each epoch.

    Keras counts epochs from 0, the curriculum from 1, so Keras epoch `e` uses
    `curriculum_lambda(e + 1)`. The value depends on the epoch number alone,
    so a run resumed with `initial_epoch` continues the curriculum exactly.
    """

    def __init__(self, method):
        super().__init__()
        self.method = method

    def on_epoch_begin(self, epoch, logs=None):
        self.method.set_curriculum_epoch(epoch + 1)


@register("ctkd")
class CTKD(Method):
    """A host logit loss at a learned temperature that plays against the student.

    The temperature is `T = t_start + t_range * sigmoid(GRL(theta))`, one
    trainable scalar `theta` shared by all examples and trained by the
    student's optimizer (same learning rate, momentum and weight decay). The
    gradient reversal `GRL` makes `theta` ascend the distillation loss while
    the student descends it; its strength `lambda` follows a cosine curriculum
    from 0 to 1 over `decay_epochs` epochs, set before each epoch by the
    callback `callbacks()` returns (docs/methods/ctkd.md).

    - `host="kd"`: `ce_weight * CE + kd_weight * KD_T(z_s, z_t)`.
    - `host="dkd"`: `ce_weight * CE + tckd_weight * TCKD_T + nckd_weight * NCKD_T`
      (no warm-up).

    In both, the learned `T` divides the logits and gives the `T^2` factor.
    With `logit_standardization=True` both logits are standardised per
    example before `T` divides them, and the weights left unset take the LS
    authors' values.

    Args:
        host: the loss the learned temperature enters, `"kd"` or `"dkd"`
            (default "kd").
        ce_weight: weight of the label cross-entropy (default 0.1 with
            host kd, 1 with host dkd).
        kd_weight: weight of the KD term, host kd only (default 0.9; 9 with LS).
        tckd_weight: weight of the `tckd` term, host dkd only (default 1; 9
            with LS). Old name: `dkd_alpha`.
        nckd_weight: weight of the `nckd` term, host dkd only (default 2; 18
            with LS). Old name: `dkd_beta`.
        t_start: lower bound of the temperature (default 1).
        t_range: width of the temperature's range: `T` lies in
            `(t_start, t_start + t_range)` (default 20).
        initial_theta: starting value of `theta` (default 1, so `T` starts
            at 15.62).
        decay_epochs: epochs over which the reversal strength rises from 0
            to 1 (default 10; 0: 1 from the start).
        logit_standardization: standardise both logits per example before
            the learned temperature divides them (default False).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> method = kerakd.methods.get("ctkd")   # 0.1 CE + 0.9 KD_T, T learned
    >>> distiller = kerakd.Distiller(student, method, teacher, weight_decay=5e-4)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> method.term_weights
    {'ce': 0.1, 'kd': 0.9}
    >>> [type(c).__name__ for c in method.callbacks("logs", None)]   # for fit: lambda's curriculum
    ['CurriculumLambda']
    >>> dkd_host = kerakd.methods.get("ctkd", host="dkd")   # CE + TCKD_T + 2 NCKD_T
    >>> dkd_host.ce_weight, dkd_host.tckd_weight, dkd_host.nckd_weight
    (1.0, 1.0, 2.0)
    """

    @renamed_arguments(dkd_alpha="tckd_weight", dkd_beta="nckd_weight")
    def __init__(self, host="kd", ce_weight: float | None = None,
                 kd_weight: float | None = None, tckd_weight: float | None = None,
                 nckd_weight: float | None = None, t_start=1.0, t_range=20.0,
                 initial_theta=1.0, decay_epochs=10, logit_standardization=False, **kwargs):
        super().__init__(**kwargs)
        if host not in HOSTS:
            raise ValueError(f"`host` must be one of {HOSTS}, got {host!r}.")
        given = {"kd_weight": kd_weight, "tckd_weight": tckd_weight, "nckd_weight": nckd_weight}
        for other in HOSTS:
            for name in _HOST_WEIGHTS[other]:
                if other != host and given[name] is not None:
                    raise ValueError(
                        f"`{name}` weights a term of host='{other}', but host='{host}'. "
                        f"Leave `{name}` unset, or pass host='{other}'."
                    )
        if not isinstance(decay_epochs, int) or isinstance(decay_epochs, bool):
            raise ValueError(
                f"`decay_epochs` must be a whole number of epochs, got {decay_epochs!r}.")
        on = bool(logit_standardization)
        if host == "kd":
            ce_weight = float(ls.preset(ce_weight, 0.1, 0.1, on))
            kd_weight = float(ls.preset(kd_weight, 0.9, 9.0, on))
            self.set_term_weights({"ce": ce_weight, "kd": kd_weight})
            host_weights = {"kd_weight": kd_weight}
        else:
            ce_weight = float(ls.preset(ce_weight, 1.0, 1.0, on))
            tckd_weight = float(ls.preset(tckd_weight, 1.0, 9.0, on))
            nckd_weight = float(ls.preset(nckd_weight, 2.0, 18.0, on))
            self.set_term_weights({"ce": ce_weight, "tckd": tckd_weight, "nckd": nckd_weight})
            host_weights = {"tckd_weight": tckd_weight, "nckd_weight": nckd_weight}
        check_non_negative(ce_weight=ce_weight, t_range=t_range, decay_epochs=decay_epochs,
                           **host_weights)
        check_positive(t_start=t_start)
        self.host = host
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.tckd_weight = tckd_weight
        self.nckd_weight = nckd_weight
        self.t_start = float(t_start)
        self.t_range = float(t_range)
        self.initial_theta = float(initial_theta)
        self.decay_epochs = decay_epochs
        self.logit_standardization = on
        # The 1-based epoch whose lambda the variable holds; a callback may set
        # it before the Distiller builds the method (fit builds on its first batch).
        self._curriculum_epoch = 1

    def build(self, spec):
        super().build(spec)
        self.theta = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.initial_theta),
            trainable=True, name="theta",
        )
        # Before any callback runs it holds the first epoch's value.
        lam = curriculum_lambda(self._curriculum_epoch, self.decay_epochs)
        self.grl_lambda = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(lam),
            trainable=False, name="grl_lambda", aggregation="only_first_replica",
        )

    def set_curriculum_epoch(self, epoch):
        """Sets the reversal strength for the 1-based `epoch` of the curriculum."""
        self._curriculum_epoch = epoch
        if self.built:
            self.grl_lambda.assign(curriculum_lambda(epoch, self.decay_epochs))

    def temperature(self):
        """The learned temperature `t_start + t_range * sigmoid(GRL(theta))`, a float32 scalar."""
        theta = ops.cast(self.theta, "float32")
        reversed_theta = gradient_reversal(theta, ops.cast(self.grl_lambda, "float32"))
        return self.t_start + self.t_range * ops.sigmoid(reversed_theta)

    def call(self, data, training=False):
        temperature = self.temperature()
        student_logits, teacher_logits = ls.logits_for_terms(data, self.logit_standardization)
        terms = {"ce": losses.cross_entropy(data.labels, data.student_logits)}
        if self.host == "kd":
            terms["kd"] = losses.kd_loss(student_logits, teacher_logits, temperature)
        else:
            terms["tckd"], terms["nckd"] = dkd_losses(
                student_logits, teacher_logits, data.labels, temperature)
        metrics = {
            "temperature": temperature,
            "lambda": ops.cast(self.grl_lambda, "float32"),
            "theta": ops.cast(self.theta, "float32"),
            **ls.scale_metrics(data, self.logit_standardization),
        }
        return MethodOutput(losses=self.weighted(terms), metrics=metrics)

    def callbacks(self, log_dir, sample_images):
        return [CurriculumLambda(self)]
