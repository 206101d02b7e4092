"""The optimizer and the learning-rate schedule of a `kerakd-train` run.

The papers' recipes are PyTorch's: SGD with momentum (and coupled weight
decay, which the `Distiller` adds to the gradient, `weight_decay=`) and a
`MultiStepLR` step decay, optionally after a linear warm-up.
"""

import keras


def learning_rate_schedule(base, milestones=(), decay=0.1, warmup_epochs=0):
    """`epoch -> learning rate` (epochs from 0): step decay with linear warm-up.

    The rate is `base * decay ** (milestones passed)`, where milestone `m`
    counts from epoch `m` on (PyTorch's `MultiStepLR`), scaled by
    `(epoch + 1) / warmup_epochs` during the first `warmup_epochs` epochs.

    Args:
        base: the initial learning rate.
        milestones: epochs at which the rate is multiplied by `decay`.
        decay: the factor applied at each milestone.
        warmup_epochs: epochs of linear warm-up (0: none).

    Example:

    >>> from kerakd.optimization import learning_rate_schedule
    >>> schedule = learning_rate_schedule(0.05, [150, 180, 210])
    >>> schedule(149), round(schedule(150), 6)
    (0.05, 0.005)
    """

    def schedule(epoch, current=None):  # Keras passes the current rate too
        rate = base * decay ** sum(epoch >= m for m in milestones)
        if epoch < warmup_epochs:
            rate *= (epoch + 1) / warmup_epochs
        return rate

    return schedule


def optimizer(flag_values):
    """The Keras optimizer of `--optimizer` (`sgd`, `adam` or `adamw`).

    Args:
        flag_values: parsed flags: `optimizer`, `learning_rate`, `momentum`,
            `nesterov` and `weight_decay` (AdamW's own, decoupled).
    """
    fv = flag_values
    if fv.optimizer == "sgd":
        return keras.optimizers.SGD(fv.learning_rate, momentum=fv.momentum,
                                    nesterov=fv.nesterov)
    if fv.optimizer == "adam":
        return keras.optimizers.Adam(fv.learning_rate)
    # PyTorch's AdamW weight decay is decoupled, as Keras's is.
    return keras.optimizers.AdamW(fv.learning_rate, weight_decay=fv.weight_decay)
