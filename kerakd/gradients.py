"""The gradient of a `Distiller` step as PyTorch's SGD recipe takes it.

PyTorch's SGD adds `weight_decay * w` to each gradient (coupled weight
decay), and `clip_grad_norm_` before `optimizer.step()` clips the gradient of
the global batch before that. Under a strategy each replica holds the
gradient of its share of the batch, which the optimizer sums over replicas.
"""

import keras
import tensorflow as tf
from keras import ops

from kerakd import distribute


def l2_penalty(variables, weight_decay):
    """`weight_decay / 2 * sum(w ** 2)`, whose gradient is `weight_decay * w`.

    Args:
        variables: the trainable variables.
        weight_decay: the coefficient (0: no penalty).
    """
    if not weight_decay:
        return 0.0
    return 0.5 * weight_decay * sum(
        ops.sum(ops.square(ops.cast(v, "float32"))) for v in variables
    )


def objective(total, variables, weight_decay, clip_norm, optimizer):
    """What a step differentiates: this replica's share of the loss `total`,
    with the weight-decay penalty unless the gradient is clipped (clipping
    reads the loss gradient alone; `clip_then_decay` adds the decay after),
    scaled as the optimizer's loss scale asks.

    Args:
        total: the weighted sum of the loss terms.
        variables: the trainable variables.
        weight_decay: the coefficient of the coupled weight decay.
        clip_norm: the Distiller's `clip_grad_norm` (0: off).
        optimizer: the optimizer that applies the gradients.
    """
    if not clip_norm:
        total = total + l2_penalty(variables, weight_decay)
    return optimizer.scale_loss(distribute.scale_for_replicas(total))


def loss_scale(optimizer):
    """The factor the gradients carry: under mixed_float16 the loss scale,
    until the `LossScaleOptimizer` removes it; else 1."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return ops.cast(optimizer.scale_loss(1.0), "float32")
    return 1.0


def clip_then_decay(gradients, variables, clip_norm, weight_decay, optimizer):
    """Per-replica gradients of the clipped global-batch loss gradient
    plus weight decay: `(clip(sum over replicas) + wd * w) / replicas`,
    which the optimizer's sum over replicas turns into PyTorch's step.

    Args:
        gradients: this replica's loss gradients (None for a variable the
            loss does not reach), without weight decay.
        variables: the variables, in the order of `gradients`.
        clip_norm: the global L2 norm to clip to.
        weight_decay: the coefficient of the coupled weight decay.
        optimizer: the optimizer that applies the gradients.
    """
    scale = loss_scale(optimizer)
    replicas = distribute.num_replicas()
    present = [i for i, g in enumerate(gradients) if g is not None]
    summed = distribute.sum_over_replicas([gradients[i] for i in present])
    clipped, _ = tf.clip_by_global_norm(summed, clip_norm * scale)
    gradients = list(gradients)
    for i, g in zip(present, clipped):
        decay = weight_decay * ops.cast(variables[i], g.dtype) * scale
        gradients[i] = (g + decay) / replicas
    return gradients
