"""Interoperability with `keras.distillation` (Keras >= 3.12).

- `from_keras(loss)`: any `keras.distillation.DistillationLoss` as a kerakd
  method, so kerakd's Distiller (taps, replicas, term metrics, CLI) can train
  with it.
- `KDLoss`: docs/methods/conventions.md's KD term as a `DistillationLoss`, for
  `keras.distillation.Distiller`.

docs/interop.md explains how the two APIs differ.
"""

import keras

from kerakd import losses
from kerakd.methods.base import Method, MethodOutput, check_non_negative, check_positive


@keras.saving.register_keras_serializable(package="kerakd")
class KerasLoss(Method):
    """A `keras.distillation.DistillationLoss` as a kerakd method.

    The objective is `ce_weight * CE(z_s, y) + distill_weight * loss`, where
    `loss.compute_loss(teacher_outputs, student_outputs)` reads, on each side,
    the layer named by the loss's `teacher_layer_name` / `student_layer_name`
    (`FeatureDistillation`) or the logits when the loss names none (as
    `keras.distillation.Distiller` does). The defaults 0.5 / 0.5 give the
    objective of `keras.distillation.Distiller(student_loss_weight=0.5)`.

    Args:
        loss: a `keras.distillation.DistillationLoss`.
        ce_weight: weight of the label cross-entropy (default 0.5).
        distill_weight: weight of `loss` (default 0.5).

    Example:

    >>> from kerakd.interop import from_keras
    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8", 10, (16, 16, 3))   # the same pool width, 64
    >>> loss = keras.distillation.FeatureDistillation(
    ...     "mse", teacher_layer_name="pool", student_layer_name="pool")
    >>> distiller = kerakd.Distiller(student, from_keras(loss), teacher)
    >>> distiller.build((8, 16, 16, 3))
    >>> distiller.method.term_weights
    {'ce': 0.5, 'distill': 0.5}
    >>> images = np.random.rand(8, 16, 16, 3).astype("float32")
    >>> list(distiller.student_features(images)), list(distiller.teacher_features(images))
    (['pool'], ['pool'])
    """

    def __init__(self, loss, ce_weight=0.5, distill_weight=0.5, **kwargs):
        super().__init__(**kwargs)
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if not isinstance(loss, keras.distillation.DistillationLoss):
            raise TypeError(
                f"`loss` must be a keras.distillation.DistillationLoss (e.g. "
                f"LogitsDistillation, FeatureDistillation); got {type(loss).__name__}."
            )
        check_non_negative(ce_weight=ce_weight, distill_weight=distill_weight)
        self.loss = loss
        self.ce_weight = ce_weight
        self.distill_weight = distill_weight
        self.set_term_weights({"ce": ce_weight, "distill": distill_weight})
        layers = {
            side: getattr(loss, f"{side}_layer_name", None) for side in ("student", "teacher")
        }
        self.student_taps = {"features": layers["student"]} if layers["student"] else {}
        self.teacher_taps = {"features": layers["teacher"]} if layers["teacher"] else {}

    @staticmethod
    def _outputs(taps, logits):
        return taps["features"][0] if taps else logits

    def call(self, data, training=False):
        teacher = self._outputs(data.teacher, data.teacher_logits)
        student = self._outputs(data.student, data.student_logits)
        self.loss.validate_outputs(teacher, student)
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "distill": keras.ops.cast(self.loss.compute_loss(teacher, student), "float32"),
            })
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            loss=keras.saving.serialize_keras_object(self.loss),
            ce_weight=self.ce_weight,
            distill_weight=self.distill_weight,
        )
        return config


def from_keras(loss, ce_weight=0.5, distill_weight=0.5):
    """Wraps a `keras.distillation.DistillationLoss` as a kerakd method.

    See `KerasLoss` (the method it returns) for the objective and taps.

    Example:

    >>> from kerakd.interop import from_keras
    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> method = from_keras(keras.distillation.LogitsDistillation(temperature=4))
    >>> distiller = kerakd.Distiller(student, method, teacher)
    >>> distiller.build((8, 16, 16, 3))
    >>> images = np.random.rand(8, 16, 16, 3).astype("float32")
    >>> terms = distiller.compute_loss_terms(images, np.arange(8))
    >>> sorted(terms)   # each also a metric of fit
    ['ce', 'distill']
    """
    return KerasLoss(loss, ce_weight=ce_weight, distill_weight=distill_weight)


@keras.saving.register_keras_serializable(package="kerakd")
class KDLoss(keras.distillation.DistillationLoss):
    """docs/methods/conventions.md's KD term as a `keras.distillation.DistillationLoss`.

    `T^2 * mean_b KL(softmax(z_t / T) || softmax(z_s / T))` from log-softmax
    on both sides (`kerakd.losses.kd_loss`), unlike
    `LogitsDistillation(loss="kl_divergence")`, which compares T-scaled
    logits without softmax or T^2. Nested outputs are summed term by term.

    Args:
        temperature: T (default 4).

    Example:

    >>> from kerakd.interop import KDLoss
    >>> teacher_logits = np.array([[4.0, 0.0, 0.0]], dtype="float32")
    >>> student_logits = np.zeros((1, 3), dtype="float32")
    >>> float(KDLoss(temperature=4).compute_loss(teacher_logits, student_logits))
    1.97...
    >>> float(kerakd.losses.kd_loss(student_logits, teacher_logits, temperature=4))   # the same
    1.97...

    In Keras's own Distiller, as its `distillation_losses`:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> distiller = keras.distillation.Distiller(
    ...     teacher, student, KDLoss(temperature=4), student_loss_weight=0.1)
    """

    def __init__(self, temperature=4.0):
        check_positive(temperature=temperature)
        self.temperature = temperature

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        terms = keras.tree.map_structure(
            lambda t, s: losses.kd_loss(s, t, self.temperature),
            teacher_outputs,
            student_outputs,
        )
        return sum(keras.tree.flatten(terms))

    def get_config(self):
        return {"temperature": self.temperature}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
