"""What the `Distiller` needs from `tf.distribute` (TensorFlow only here).

docs/methods/conventions.md fixes the reduction: every term is computed per replica on the
replica's share of the batch (a mean for per-example terms, the batch-coupled
value for Grams and relations) and divided by the number of replicas before
the gradients are summed across replicas. With equal shares
(`drop_remainder=True`) the per-example terms then equal their mean over the
global batch, exactly as `tf.nn.compute_average_loss` would give.
"""

import tensorflow as tf
from keras import ops

from kerakd import compat


def num_replicas():
    """Replicas in sync in the current strategy (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_for_replicas(loss):
    """`loss / num_replicas()`: the per-replica share of a summed gradient."""
    replicas = num_replicas()
    if replicas == 1:
        return loss
    return loss * tf.cast(1.0 / replicas, loss.dtype)


def sum_over_replicas(values):
    """The sum of each tensor of `values` over the replicas in sync (the
    values themselves outside a strategy)."""
    if num_replicas() == 1:
        return list(values)
    return tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, list(values))


def average_over_replicas(variables):
    """Sets each of `variables` (replica-local copies, in a replica context)
    to its mean over the replicas in sync; nothing to do outside a strategy."""
    if num_replicas() == 1 or not variables:
        return
    # Plain tensors: handed the variables themselves, a multi-worker
    # all-reduce looks for destinations on them and finds none.
    means = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in variables])
    for variable, mean in zip(variables, means):
        variable.assign(mean)


def average_moving_statistics(models):
    """Averages the BatchNorm moving statistics of `models` over the replicas
    after a step.

    Each replica normalizes with its own batch statistics (conventions:
    DDP without SyncBN), but Keras keeps a copy of every moving statistic
    per replica, which would drift apart (DDP broadcasts rank 0's): the
    exported student would keep one replica's, and evaluation under the
    strategy would read a mixture. One all-reduce of a few vectors.

    Args:
        models: the layers whose statistics to average (the student, the
            method).
    """
    average_over_replicas([v for model in models for v in model.non_trainable_variables
                           if v.name in ("moving_mean", "moving_variance")])


def first_local_batch(strategy, iterator):
    """The first batch of a Keras epoch iterator over a distributed dataset,
    as the first local replica's share (the per-replica batch).

    Keras builds a model under a strategy from one batch it all-reduces to
    read its shapes, which fails under MultiWorkerMirroredStrategy; this
    share has the same shapes without an all-reduce.
    """
    for _, _, batches in iterator:
        return tf.nest.map_structure(
            lambda v: strategy.experimental_local_results(v)[0]
            if isinstance(v, tf.distribute.DistributedValues) else v,
            next(batches),
        )
    return None


def is_multi_worker():
    """True under a MultiWorkerMirroredStrategy spanning several workers."""
    strategy = tf.distribute.get_strategy()
    return isinstance(
        strategy, tf.distribute.experimental.MultiWorkerMirroredStrategy
    ) and compat.in_multi_worker_mode(strategy)


def step_results(results):
    """Per-step metric results in the form Keras can reduce across replicas.

    Under several workers Keras 3 reduces each step output with
    `strategy.reduce("MEAN", value, axis=0)`, which rejects scalars; a
    1-element vector reduces to the same scalar.
    """
    if not is_multi_worker():
        return results
    return {name: tf.reshape(value, (1,)) for name, value in results.items()}


def synchronize_batchnorm(model):
    """A copy of `model` whose BatchNorm layers synchronize across replicas.

    By default each replica normalizes with its own batch statistics (as
    PyTorch DDP without SyncBN); synchronized BatchNorm uses the statistics of
    the global batch, which helps when per-replica batches are small. The copy
    holds the same weights and the same layer classes (`synchronized=True` is
    a core BatchNormalization option, which `kerakd.nn.BatchNormalization`
    keeps).

    Args:
        model: a functional Keras model.

    Returns:
        A new functional model.

    Example:

    >>> import tensorflow as tf
    >>> from kerakd.distribute import synchronize_batchnorm
    >>> strategy = tf.distribute.MirroredStrategy()   # every local GPU (here: the CPU)
    >>> with strategy.scope():
    ...     student = synchronize_batchnorm(kerakd.models.get("resnet8x4", 10, (16, 16, 3)))
    >>> {layer.synchronized for layer in student.layers
    ...  if isinstance(layer, keras.layers.BatchNormalization)}
    {True}
    """
    import keras

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["synchronized"] = True
        return layer.__class__.from_config(config)

    synchronized = keras.models.clone_model(model, clone_function=clone)
    synchronized.set_weights(model.get_weights())
    return synchronized


def on_every_replica(flag):
    """True if `flag` holds on every replica (the same value on each)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return flag
    failing = context.all_reduce("SUM", 1 - ops.cast(flag, "int32"))  # no MIN op
    return ops.equal(failing, 0)


def apply_if(condition, apply):
    """Runs `apply()` (an optimizer update) only if `condition`, a value
    equal on every replica.

    An update may sync replicas with `merge_call`, which a `cond` in replica
    context cannot hold; the `cond` then runs in cross-replica context, as
    Keras's `LossScaleOptimizer` does.
    """
    def update():
        apply()  # `cond` branches must return alike: nothing

    if num_replicas() == 1 or (
            compat.strategy_supports_no_merge_call()):
        ops.cond(condition, update, lambda: None)
        return

    def cross_replica(strategy, condition):
        condition = strategy.experimental_local_results(condition)[0]
        ops.cond(condition, lambda: strategy.extended.call_for_each_replica(update),
                 lambda: None)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(condition,))


def forward_state(models):
    """`[(variable, its value now)]` of what a forward pass of `models`
    updates (BatchNorm statistics, memory banks), for `apply_if_finite`.

    Args:
        models: the layers the step runs (the student, the method).
    """
    return [(v, ops.copy(v)) for model in models for v in model.non_trainable_variables]


def apply_if_finite(optimizer, gradients, variables, values, state):
    """Applies `gradients` only if they and `values` (the loss terms) are
    finite on every replica; else puts `state` back as it was.

    Args:
        optimizer: applies `gradients` to `variables`.
        gradients: the step's gradients (None for a variable not reached).
        variables: the trainable variables.
        values: the loss and its terms.
        state: `forward_state` before the forward pass, put back on a
            non-finite step.

    Returns:
        The flag: the step was finite (and applied).
    """
    finite = on_every_replica(all_finite(
        [*values, *(g for g in gradients if g is not None)]))
    apply_if(finite, lambda: optimizer.apply_gradients(zip(gradients, variables)))
    for variable, before in state:
        variable.assign(ops.where(finite, variable, before))
    return finite


def all_finite(tensors):
    """True if every element of every tensor is finite."""
    return ops.all(ops.stack([ops.all(ops.isfinite(t)) for t in tensors]))
