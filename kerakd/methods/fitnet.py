"""`fitnet`: Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015)."""

import keras
from keras import ops

from kerakd import losses
from kerakd.methods.base import Method, MethodOutput, check_non_negative, renamed_arguments
from kerakd.methods.registry import register
from kerakd.models import layers as zoo_layers
from kerakd.nn import layers as nn_layers


@register("fitnet")
class FitNet(Method):
    """`ce_weight * CE + hint_weight * MSE(r(f_s), f_t)` on one mid-level pair.

    The regressor `r` is conv1x1 -> BatchNorm mapping the student's channels
    to the teacher's (docs/methods/fitnet.md). The conv has no bias: the BatchNorm that
    follows it has one. The spatial sizes of the pair must match; choose the
    taps so that they do.

    Args:
        ce_weight: weight of the `ce` term, the reference code's gamma (default 1).
        hint_weight: weight of the `hint` term, the reference code's beta (default 100).
        stage: index into the `"stages"` taps of both networks (default 1:
            the second stage, RepDistiller's `hint_layer=2`). Old name:
            `hint_stage`.

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> distiller = kerakd.Distiller(student, kerakd.methods.get("fitnet"), teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 1.0, 'hint': 100.0}
    >>> images = np.random.rand(8, 16, 16, 3).astype("float32")
    >>> {name: tuple(f.shape) for name, f in distiller.student_features(images).items()}
    {'stage1': (8, 16, 16, 16), 'stage2': (8, 8, 8, 32), 'stage3': (8, 4, 4, 64)}
    >>> {name: tuple(f.shape) for name, f in distiller.teacher_features(images).items()}
    {'stage1': (8, 16, 16, 64), 'stage2': (8, 8, 8, 128), 'stage3': (8, 4, 4, 256)}
    """

    student_taps = {"features": "stages"}
    teacher_taps = {"features": "stages"}

    @renamed_arguments(hint_stage="stage")
    def __init__(self, ce_weight=1.0, hint_weight=100.0, stage=1, **kwargs):
        super().__init__(**kwargs)
        check_non_negative(ce_weight=ce_weight, hint_weight=hint_weight)
        self.ce_weight = ce_weight
        self.hint_weight = hint_weight
        self.stage = stage
        self.set_term_weights({"ce": ce_weight, "hint": hint_weight})

    def _pair(self, student, teacher):
        for side, taps in (("student", student), ("teacher", teacher)):
            if not -len(taps) <= self.stage < len(taps):
                raise ValueError(
                    f"`stage={self.stage}` is out of range: the "
                    f"{side} has {len(taps)} taps."
                )
        return student[self.stage], teacher[self.stage]

    def build(self, spec):
        super().build(spec)
        s_shape, t_shape = self._pair(spec.student["features"], spec.teacher["features"])
        if tuple(s_shape[1:3]) != tuple(t_shape[1:3]):
            raise ValueError(
                f"FitNet needs a student and teacher tap of the same spatial "
                f"size; got {s_shape[1:3]} and {t_shape[1:3]}. Choose other taps."
            )
        self.regressor = keras.Sequential(
            [
                nn_layers.conv2d(t_shape[-1], 1, name="conv"),
                zoo_layers.batch_norm("bn"),
            ],
            name="regressor",
        )
        self.regressor.build(s_shape)

    def call(self, data, training=False):
        f_s, f_t = self._pair(data.student["features"], data.teacher["features"])
        hint = self.regressor(f_s, training=training)
        hint = ops.cast(hint, "float32")
        f_t = ops.stop_gradient(ops.cast(f_t, "float32"))
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "hint": ops.mean(ops.square(hint - f_t)),
            })
        )
