"""`kd`: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015)."""

from kerakd import losses
from kerakd import methods
from kerakd.methods.base import Method, MethodOutput, check_non_negative, check_positive


@methods.register("kd")
class KD(Method):
    """`ce_weight * CE(z_s, y) + kd_weight * KD_T(z_s, z_t)` (docs/methods/kd.md).

    Args:
        ce_weight: gamma, weight of the label cross-entropy (default 0.1).
        kd_weight: alpha, weight of the KD term (default 0.9).
        temperature: T (default 4).

    Example:

    >>> distiller = kerakd.Distiller(student, kerakd.methods.get("kd"), teacher)
    """

    def __init__(self, ce_weight=0.1, kd_weight=0.9, temperature=4.0, **kwargs):
        super().__init__(**kwargs)
        check_non_negative(ce_weight=ce_weight, kd_weight=kd_weight)
        check_positive(temperature=temperature)
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.term_weights = {"ce": ce_weight, "kd": kd_weight}

    def call(self, data, training=False):
        return MethodOutput(
            losses={
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "kd": losses.kd_loss(
                    data.student_logits, data.teacher_logits, self.temperature
                ),
            }
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            ce_weight=self.ce_weight,
            kd_weight=self.kd_weight,
            temperature=self.temperature,
        )
        return config
