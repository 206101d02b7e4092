"""The objective of a `Distiller` step and its gradient as PyTorch's SGD
recipe takes it.

PyTorch's SGD adds `weight_decay * w` to each gradient (coupled weight
decay), and `clip_grad_norm_` before `optimizer.step()` clips the gradient of
the global batch before that. Under a strategy each replica holds the
gradient of its share of the batch, which the optimizer sums over replicas.
"""

import keras
import tensorflow as tf
from keras import ops

from kerakd import distribute


def weighted_terms(terms, weights):
    """`{name: weight * value}` of a method's loss terms, the weights in float32.

    Args:
        terms: `{term name: unweighted value}` (a `MethodOutput`'s `losses`).
        weights: the method's `term_weights` (numbers, or variables).

    Example:

    >>> from kerakd.gradients import total_loss, weighted_terms
    >>> terms, weights = {"ce": 2.0, "kd": 0.5}, {"ce": 0.1, "kd": 0.9}
    >>> {name: round(float(value), 4) for name, value in weighted_terms(terms, weights).items()}
    {'ce': 0.2, 'kd': 0.45}
    >>> round(float(total_loss(terms, weights)), 4)
    0.65
    """
    return {name: ops.cast(weights[name], "float32") * value for name, value in terms.items()}


def total_loss(terms, weights):
    """The sum of `weighted_terms(terms, weights)`: the loss a step minimizes
    (before weight decay)."""
    return sum(weighted_terms(terms, weights).values())


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


def step_gradients(forward, weights, variables, weight_decay, clip_norm, optimizer):
    """Runs a step's forward pass under a gradient tape; returns its output,
    the loss and the gradients of the step's objective (`objective`, then
    `clip_then_decay` if clipping), ready for `optimizer`.

    Args:
        forward: a function of no arguments returning the step's `MethodOutput`.
        weights: the method's `term_weights`.
        variables: the trainable variables.
        weight_decay: the coefficient of the coupled weight decay.
        clip_norm: the Distiller's `clip_grad_norm` (0: off).
        optimizer: the optimizer that applies the gradients.

    Returns:
        `(output, total_loss, gradients)`, a gradient None for a variable the
        loss does not reach.
    """
    with tf.GradientTape() as tape:
        output = forward()
        total = total_loss(output.losses, weights)
        loss = objective(total, variables, weight_decay, clip_norm, optimizer)
    gradients = tape.gradient(loss, variables)
    if clip_norm:
        gradients = clip_then_decay(gradients, variables, clip_norm, weight_decay, optimizer)
    return output, total, gradients


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
