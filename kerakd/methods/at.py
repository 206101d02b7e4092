"""`at`: Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017)."""

from kerakd import losses
from kerakd.methods.base import Method, MethodOutput, check_non_negative, check_paired_taps
from kerakd.methods.feature_ops import adaptive_average_pool
from kerakd.methods.registry import register


def _check_sizes(i, student, teacher):
    """Checks that one map of pair `i` can be pooled to the other's size."""
    s, t = tuple(student[1:3]), tuple(teacher[1:3])
    if s == t:
        return
    if None in s + t:
        raise ValueError(
            f"AT pair {i} has spatial sizes {s} (student) and {t} (teacher); "
            "pooling the larger to the smaller needs static sizes. Build the "
            "models with a fixed keras.Input shape."
        )
    nested = (s[0] >= t[0] and s[1] >= t[1]) or (s[0] <= t[0] and s[1] <= t[1])
    if not nested:
        raise ValueError(
            f"AT pair {i} has spatial sizes {s} (student) and {t} (teacher): "
            "neither is at least the other's size in both dimensions, so "
            "neither can be pooled to the other. Pair taps whose sizes nest "
            "(student_taps=/teacher_taps=)."
        )


def pool_to_smaller(student_features, teacher_features):
    """The pair at the smaller map's spatial size, as RepDistiller's AT does.

    The larger feature map (all its channels, before any attention is taken)
    is average-pooled with PyTorch's adaptive bins to the other's `(H, W)`;
    maps of equal sizes are returned as they are.

    Args:
        student_features: `(B, H_s, W_s, C_s)`.
        teacher_features: `(B, H_t, W_t, C_t)`, with sizes that nest with the
            student's (both dimensions larger, or both smaller).

    Returns:
        `(student_features, teacher_features)` of equal spatial sizes.
    """
    s, t = tuple(student_features.shape[1:3]), tuple(teacher_features.shape[1:3])
    if s == t:
        return student_features, teacher_features
    if s[0] > t[0] or s[1] > t[1]:
        return adaptive_average_pool(student_features, t), teacher_features
    return student_features, adaptive_average_pool(teacher_features, s)


@register("at")
class AT(Method):
    """`ce_weight * CE + at_weight * sum_pairs AT(f_s, f_t)` with p = 2.

    Pairs are the i-th stage taps of both networks; they must be as many.
    When a pair's spatial sizes differ, the larger feature map is first
    average-pooled to the smaller one's size (adaptive average pooling, as
    the authors' and RepDistiller's code do); docs/methods/conventions.md
    gives `AT`.

    Args:
        ce_weight: weight of the `ce` term, the reference code's gamma (default 1).
        at_weight: weight of the `at` term, the reference code's beta (default 1000).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> distiller = kerakd.Distiller(student, kerakd.methods.get("at"), teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 1.0, 'at': 1000.0}
    >>> images = np.random.rand(8, 16, 16, 3).astype("float32")
    >>> {name: tuple(f.shape) for name, f in distiller.student_features(images).items()}
    {'stage1': (8, 16, 16, 16), 'stage2': (8, 8, 8, 32), 'stage3': (8, 4, 4, 64)}
    >>> {name: tuple(f.shape) for name, f in distiller.teacher_features(images).items()}
    {'stage1': (8, 16, 16, 64), 'stage2': (8, 8, 8, 128), 'stage3': (8, 4, 4, 256)}
    """

    student_taps = {"features": "stages"}
    teacher_taps = {"features": "stages"}

    def __init__(self, ce_weight=1.0, at_weight=1000.0, **kwargs):
        super().__init__(**kwargs)
        check_non_negative(ce_weight=ce_weight, at_weight=at_weight)
        self.ce_weight = ce_weight
        self.at_weight = at_weight
        self.set_term_weights({"ce": ce_weight, "at": at_weight})

    def build(self, spec):
        super().build(spec)
        for i, (s, t) in enumerate(check_paired_taps("AT", spec)):
            _check_sizes(i, s, t)

    def call(self, data, training=False):
        pairs = zip(data.student["features"], data.teacher["features"])
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "at": sum(losses.at_loss(*pool_to_smaller(s, t)) for s, t in pairs),
            })
        )
