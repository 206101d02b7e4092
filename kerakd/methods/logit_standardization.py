"""Logit standardisation (LS, Sun et al., CVPR 2024) as an option of the logit terms.

LS is not a method of its own: `kd`, `dkd`, `mlkd` and `ctkd` take
`logit_standardization=True` (and so do `semckd`, `afd` and `crd` for
their KD term), which standardises student and teacher logits
per example (`kerakd.losses.standardize_logits`) before the method's
temperature divides them, and switches the hyperparameters the user left
unset to the presets the LS authors train with (docs/methods/kd.md, "Logit
standardisation"). The `T^2` factor of the KD term stays, with `T` the
(base) temperature.
"""

from keras import ops

from kerakd import losses


def preset(value, default, standardized_default, logit_standardization):
    """`value` if the user set it, else the default of the chosen mode.

    Args:
        value: the constructor argument (None when unset).
        default: the method's default without LS.
        standardized_default: the LS authors' value.
        logit_standardization: whether LS is on.
    """
    if value is not None:
        return value
    return standardized_default if logit_standardization else default


def logits_for_terms(data, logit_standardization):
    """`(student, teacher)` logits the KD terms compare: standardised when LS is on."""
    if not logit_standardization:
        return data.student_logits, data.teacher_logits
    return (losses.standardize_logits(data.student_logits),
            losses.standardize_logits(data.teacher_logits))


def kd_term(data, temperature, logit_standardization):
    """The KD term `KD_T(z_s, z_t)` of a step, of the standardised logits when
    LS is on: the one the KD-hosting methods (`kd`, `semckd`, `afd`, `crd`)
    report as `kd`.

    Args:
        data: the step's `StepData`.
        temperature: T (LS's base temperature when LS is on).
        logit_standardization: whether LS is on.
    """
    student, teacher = logits_for_terms(data, logit_standardization)
    return losses.kd_loss(student, teacher, temperature)


def scale_metrics(data, logit_standardization):
    """`{student_logit_std, teacher_logit_std}` of the raw logits when LS is on.

    The gap between the two is the scale mismatch LS removes.
    """
    if not logit_standardization:
        return {}
    return {
        "student_logit_std": ops.mean(losses.unbiased_std(data.student_logits)),
        "teacher_logit_std": ops.mean(losses.unbiased_std(data.teacher_logits)),
    }
