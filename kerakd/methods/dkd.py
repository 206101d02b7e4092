"""`dkd`: Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022)."""

import keras
from keras import ops

from kerakd import losses
from kerakd.methods import logit_standardization as ls
from kerakd.methods.base import (Method, MethodOutput, check_non_negative, check_positive,
                                 renamed_arguments)
from kerakd.methods.registry import register

# Subtracted from the target logit / T to drop it from a softmax, as in
# mdistiller (exp(-1000) is exactly 0 in float32).
_MASK = 1000.0


def _binary_logits(logits, target_mask, temperature):
    # T * [z_y / T, logsumexp_{k != y} z_k / T]: their softmax at T is
    # (p_target, p_non_target), the binary distribution of TCKD.
    z = ops.cast(logits, "float32") / temperature
    target = ops.sum(z * target_mask, axis=-1)
    non_target = ops.logsumexp(z - _MASK * target_mask, axis=-1)
    return temperature * ops.stack([target, non_target], axis=-1)


def dkd_losses(student_logits, teacher_logits, labels, temperature=4.0):
    """The two DKD terms, `(tckd, nckd)`, each `T^2 * mean_b KL(teacher || student)`.

    - TCKD: KL between the binary distributions (target class, all others).
    - NCKD: KL between the distributions over the non-target classes.

    Both are the KD term of docs/methods/conventions.md (`losses.kd_loss`) applied to
    transformed logits, so the teacher is a stop-gradient target and no
    probability is clipped. mdistiller takes `log` of the binary
    probabilities; the log-sum-exp here gives the same value without
    underflow.

    Args:
        student_logits: `(B, K)`.
        teacher_logits: `(B, K)`.
        labels: int class ids `(B,)` or soft labels `(B, K)` (their arg-max
            is the target class).
        temperature: T.

    Returns:
        `(tckd, nckd)`, float32 scalars.
    """
    t = losses.as_temperature(temperature)
    num_classes = ops.shape(student_logits)[-1]
    target_mask = ops.one_hot(losses.hard_labels(labels), num_classes, dtype="float32")
    tckd = losses.kd_loss(
        _binary_logits(student_logits, target_mask, t),
        _binary_logits(teacher_logits, target_mask, t),
        t,
    )
    # Masking z / T by -1000 is masking z by -1000 T.
    mask = _MASK * t * target_mask
    nckd = losses.kd_loss(
        ops.cast(student_logits, "float32") - mask,
        ops.cast(teacher_logits, "float32") - mask,
        t,
    )
    return tckd, nckd


def warmup_factor(epoch, warmup):
    """`min(epoch / warmup, 1)` for the 1-based `epoch` (mdistiller); 1 if `warmup` is 0."""
    return min(epoch / warmup, 1.0) if warmup else 1.0


class DKDWarmup(keras.callbacks.Callback):
    """Sets the DKD term weights to `tckd_weight, nckd_weight x warmup_factor(epoch)` each epoch.

    Keras counts epochs from 0; mdistiller from 1, so epoch `e` of Keras uses
    `warmup_factor(e + 1)`. Resuming with `initial_epoch` continues the ramp.
    """

    def __init__(self, method):
        super().__init__()
        self.method = method

    def on_epoch_begin(self, epoch, logs=None):
        self.method.set_warmup_epoch(epoch + 1)


@register("dkd")
class DKD(Method):
    """`ce_weight * CE + w(epoch) * (tckd_weight * TCKD + nckd_weight * NCKD)` (mdistiller).

    `w(epoch) = min(epoch / warmup, 1)` ramps the DKD terms in over the first
    `warmup` epochs. The weights of `tckd` and `nckd` are non-trainable
    variables that `DKDWarmup` (returned by `callbacks()`, which the CLI
    adds) updates at the start of each epoch. They start at the value of the
    first epoch, `1 / warmup`; a `fit` without the callback keeps them there,
    so pass `method.callbacks(...)` to `fit` when not using the CLI.

    Args:
        ce_weight: weight of the label cross-entropy (default 1).
        tckd_weight: weight of the `tckd` term after warm-up, the paper's
            alpha (default 1; 9 with LS). Old name: `alpha`.
        nckd_weight: weight of the `nckd` term after warm-up, the paper's
            beta (default 8, the authors' value for resnet32x4 -> resnet8x4;
            72 with LS). Old name: `beta`.
        temperature: T (default 4; 2 with LS).
        warmup: epochs of the linear ramp (default 20; 0 disables it).
        logit_standardization: standardise both logits per example before
            the target/non-target split (default False). The unset
            hyperparameters then take the LS authors' values for
            resnet32x4 -> resnet8x4: `temperature` 2 and `tckd_weight`,
            `nckd_weight` multiplied by their KD weight 9 (9 and 72). The
            warm-up stays.

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> method = kerakd.methods.get("dkd", nckd_weight=8)
    >>> distiller = kerakd.Distiller(student, method, teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> {name: round(float(w), 4) for name, w in method.term_weights.items()}   # epoch 1 of 20
    {'ce': 1.0, 'tckd': 0.05, 'nckd': 0.4}
    >>> [type(c).__name__ for c in method.callbacks("logs", None)]   # for fit: the warm-up
    ['DKDWarmup']
    >>> dkd_ls = kerakd.methods.get("dkd", logit_standardization=True)
    >>> dkd_ls.tckd_weight, dkd_ls.nckd_weight, dkd_ls.temperature
    (9.0, 72.0, 2.0)
    """

    @renamed_arguments(alpha="tckd_weight", beta="nckd_weight")
    def __init__(self, ce_weight=1.0, tckd_weight: float | None = None,
                 nckd_weight: float | None = None, temperature: float | None = None,
                 warmup=20, logit_standardization=False, **kwargs):
        super().__init__(**kwargs)
        tckd_weight = ls.preset(tckd_weight, 1.0, 9.0, logit_standardization)
        nckd_weight = ls.preset(nckd_weight, 8.0, 72.0, logit_standardization)
        temperature = ls.preset(temperature, 4.0, 2.0, logit_standardization)
        check_non_negative(ce_weight=ce_weight, tckd_weight=tckd_weight,
                           nckd_weight=nckd_weight, warmup=warmup)
        check_positive(temperature=temperature)
        self.ce_weight = ce_weight
        self.tckd_weight = tckd_weight
        self.nckd_weight = nckd_weight
        self.temperature = temperature
        self.warmup = warmup
        self.logit_standardization = bool(logit_standardization)
        self._warmup_epoch = 1
        # Until build, the configured weights; build puts the warm-up's
        # variables in their place.
        self.set_term_weights({"ce": ce_weight, "tckd": tckd_weight, "nckd": nckd_weight})

    def build(self, spec):
        super().build(spec)
        # The epoch a callback set before the method was built (a `fit` builds
        # the Distiller on its first batch, after `on_epoch_begin`).
        factor = warmup_factor(self._warmup_epoch, self.warmup)
        # Both variables exist whatever the weights, so the saved weights do
        # not depend on them.
        self.tckd_epoch_weight = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.tckd_weight * factor),
            trainable=False, name="tckd_weight", aggregation="only_first_replica",
        )
        self.nckd_epoch_weight = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.nckd_weight * factor),
            trainable=False, name="nckd_weight", aggregation="only_first_replica",
        )
        warmed = {"tckd": self.tckd_epoch_weight, "nckd": self.nckd_epoch_weight}
        self.term_weights = {name: warmed.get(name, weight)
                             for name, weight in self.term_weights.items()}

    def set_warmup_epoch(self, epoch):
        """Sets the term weights for the 1-based `epoch` of the ramp."""
        self._warmup_epoch = epoch
        if not self.built:
            return  # build starts from it
        factor = warmup_factor(epoch, self.warmup)
        self.tckd_epoch_weight.assign(self.tckd_weight * factor)
        self.nckd_epoch_weight.assign(self.nckd_weight * factor)

    def call(self, data, training=False):
        student_logits, teacher_logits = ls.logits_for_terms(data, self.logit_standardization)
        tckd, nckd = dkd_losses(student_logits, teacher_logits, data.labels, self.temperature)
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "tckd": tckd,
                "nckd": nckd,
            }),
            metrics=ls.scale_metrics(data, self.logit_standardization),
        )

    def callbacks(self, log_dir, sample_images):
        return [DKDWarmup(self)]
