"""`at`: Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017)."""

from kerakd import losses
from kerakd import methods
from kerakd.methods.base import Method, MethodOutput, check_non_negative, check_paired_taps


@methods.register("at")
class AT(Method):
    """`ce_weight * CE + at_weight * sum_pairs AT(f_s, f_t)` with p = 2.

    Pairs are the i-th stage taps of both networks; they must be as many and
    of equal spatial sizes (docs/methods/conventions.md gives `AT`).

    Args:
        ce_weight: gamma (default 1).
        at_weight: beta (default 1000).

    Example:

    >>> kerakd.Distiller(student, kerakd.methods.get("at"), teacher)
    """

    student_taps = {"features": "stages"}
    teacher_taps = {"features": "stages"}

    def __init__(self, ce_weight=1.0, at_weight=1000.0, **kwargs):
        super().__init__(**kwargs)
        check_non_negative(ce_weight=ce_weight, at_weight=at_weight)
        self.ce_weight = ce_weight
        self.at_weight = at_weight
        self.term_weights = {"ce": ce_weight, "at": at_weight}

    def build(self, spec):
        super().build(spec)
        pairs = check_paired_taps("AT", spec)
        for i, (s, t) in enumerate(pairs):
            if tuple(s[1:3]) != tuple(t[1:3]):
                raise ValueError(
                    f"AT pair {i} has spatial sizes {s[1:3]} (student) and "
                    f"{t[1:3]} (teacher); they must match."
                )

    def call(self, data, training=False):
        pairs = zip(data.student["features"], data.teacher["features"])
        return MethodOutput(
            losses={
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "at": sum(losses.at_loss(s, t) for s, t in pairs),
            }
        )

    def get_config(self):
        config = super().get_config()
        config.update(ce_weight=self.ce_weight, at_weight=self.at_weight)
        return config
