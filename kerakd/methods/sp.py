"""`sp`: Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019)."""

from keras import ops

from kerakd import losses
from kerakd.methods.base import Method, MethodOutput, check_non_negative
from kerakd.methods.feature_ops import l2_normalize
from kerakd.methods.registry import register


def _similarity(features):
    # Row-normalised Gram matrix of the flattened features, (B, B).
    f = ops.cast(features, "float32")
    f = ops.reshape(f, (ops.shape(f)[0], -1))
    return l2_normalize(ops.matmul(f, ops.transpose(f)), axis=1)


def sp_loss(student_features, teacher_features):
    """`||G_s - G_t||_F^2 / B^2` between row-normalised Gram matrices.

    The channel order of the flattening does not matter (a Gram matrix is
    invariant to it), so channels-last features give PyTorch's value.
    """
    g_s = _similarity(student_features)
    g_t = ops.stop_gradient(_similarity(teacher_features))
    batch = ops.cast(ops.shape(g_s)[0], "float32")
    return ops.sum(ops.square(g_t - g_s)) / (batch * batch)


@register("sp")
class SP(Method):
    """`ce_weight * CE + sp_weight * sum_pairs SP(f_s, f_t)` (docs/methods/sp.md).

    The Gram matrices couple the examples of a batch, so each replica
    computes them on its own examples (docs/methods/conventions.md). By default one pair
    is compared, the last stage of both networks: RepDistiller's `feat[-2]`.

    Args:
        ce_weight: weight of the `ce` term, the reference code's gamma (default 1).
        sp_weight: weight of the `sp` term, the reference code's beta (default 3000).
        stage: index into the `"stages"` taps of both networks of the pair to
            compare (default -1, the last). `None` compares every pair of the
            taps, i.e. every stage, or the user's `student_taps`/
            `teacher_taps` lists, and sums the terms.

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> distiller = kerakd.Distiller(student, kerakd.methods.get("sp"), teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 1.0, 'sp': 3000.0}
    >>> images = np.random.rand(8, 16, 16, 3).astype("float32")
    >>> {name: tuple(f.shape) for name, f in distiller.student_features(images).items()}
    {'stage1': (8, 16, 16, 16), 'stage2': (8, 8, 8, 32), 'stage3': (8, 4, 4, 64)}
    >>> {name: tuple(f.shape) for name, f in distiller.teacher_features(images).items()}
    {'stage1': (8, 16, 16, 64), 'stage2': (8, 8, 8, 128), 'stage3': (8, 4, 4, 256)}
    """

    student_taps = {"features": "stages"}
    teacher_taps = {"features": "stages"}

    def __init__(self, ce_weight=1.0, sp_weight=3000.0, stage=-1, **kwargs):
        super().__init__(**kwargs)
        check_non_negative(ce_weight=ce_weight, sp_weight=sp_weight)
        self.ce_weight = ce_weight
        self.sp_weight = sp_weight
        self.stage = stage
        self.set_term_weights({"ce": ce_weight, "sp": sp_weight})

    def _pairs(self, student, teacher):
        if len(student) != len(teacher):
            raise ValueError(
                f"SP pairs taps one to one, but the student has {len(student)} "
                f"taps and the teacher {len(teacher)}. Pass student_taps/"
                "teacher_taps lists of equal length."
            )
        if self.stage is None:
            return list(zip(student, teacher))
        if not -len(student) <= self.stage < len(student):
            raise ValueError(
                f"`stage={self.stage}` is out of range: the networks have "
                f"{len(student)} taps."
            )
        return [(student[self.stage], teacher[self.stage])]

    def build(self, spec):
        super().build(spec)
        self._pairs(spec.student["features"], spec.teacher["features"])

    def call(self, data, training=False):
        pairs = self._pairs(data.student["features"], data.teacher["features"])
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "sp": sum(sp_loss(s, t) for s, t in pairs),
            })
        )
