"""`kd`: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015)."""

from kerakd import losses
from kerakd.methods import logit_standardization as ls
from kerakd.methods.base import Method, MethodOutput, check_non_negative, check_positive
from kerakd.methods.registry import register


@register("kd")
class KD(Method):
    """`ce_weight * CE(z_s, y) + kd_weight * KD_T(z_s, z_t)` (docs/methods/kd.md).

    With `logit_standardization=True` both logits are standardised per example
    before `T` divides them (`KD_T(n(z_s), n(z_t))`), and the unset weights take
    the LS authors' values: `kd_weight` 9, `temperature` 2 (the base
    temperature), `ce_weight` 0.1 as without LS.

    Args:
        ce_weight: weight of the `ce` term, the label cross-entropy
            (default 0.1).
        kd_weight: weight of the `kd` term, the reference code's alpha
            (default 0.9; 9 with LS).
        temperature: T (default 4; 2 with LS).
        logit_standardization: standardise the logits the KD term compares
            (default False).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> distiller = kerakd.Distiller(student, kerakd.methods.get("kd"), teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 0.1, 'kd': 0.9}
    >>> kd_ls = kerakd.methods.get("kd", logit_standardization=True)  # 9 KD_2(n(z_s), n(z_t))
    >>> kd_ls.kd_weight, kd_ls.temperature
    (9.0, 2.0)
    """

    def __init__(self, ce_weight=0.1, kd_weight: float | None = None,
                 temperature: float | None = None, logit_standardization=False, **kwargs):
        super().__init__(**kwargs)
        kd_weight = ls.preset(kd_weight, 0.9, 9.0, logit_standardization)
        temperature = ls.preset(temperature, 4.0, 2.0, logit_standardization)
        check_non_negative(ce_weight=ce_weight, kd_weight=kd_weight)
        check_positive(temperature=temperature)
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.logit_standardization = bool(logit_standardization)
        self.set_term_weights({"ce": ce_weight, "kd": kd_weight})

    def call(self, data, training=False):
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "kd": ls.kd_term(data, self.temperature, self.logit_standardization),
            }),
            metrics=ls.scale_metrics(data, self.logit_standardization),
        )
