"""Every private Keras and TensorFlow API kerakd uses, in one place.

Keras and TensorFlow give no public way to do what these wrappers do (each
says why it is needed), so they reach into private attributes that a release
may rename or drop. Each was checked on Keras 3.15.1 and TensorFlow 2.21.0,
the versions `setup.cfg` allows; `tests/test_compat.py` asserts every one
still exists, so that an upgrade fails there, loudly, and not deep inside a
training step or with a silently wrong result.

One private API cannot be wrapped here: `Distiller` overrides Keras's hook
`SYMBOLIC_BUILD_HOOK` (see its comment), and an override has to keep the
hook's name. `tests/test_compat.py` asserts `keras.Model` still has the hook
with its arguments and that `fit` still calls it.
"""

import tensorflow as tf

# `keras.Model._maybe_symbolic_build(iterator=None, data_batch=None)`: the
# hook `fit`, `evaluate` and `*_on_batch` call to build a model created under
# a distribution strategy from its first batch. `Distiller` overrides it: the
# Keras version reads the batch's shapes with an all-reduce, which fails
# under MultiWorkerMirroredStrategy.
SYMBOLIC_BUILD_HOOK = "_maybe_symbolic_build"


def creation_strategy(model):
    """The distribution strategy `model` was created under, or None.

    Needed because the public `model.distribute_strategy` falls back to the
    current (default) strategy, so it cannot tell a model made outside any
    strategy, which Keras builds lazily, from one made in a strategy scope.
    """
    return model._distribute_strategy


def compile_metrics(model):
    """The metrics `model.compile(metrics=...)` made (a Keras
    `CompileMetrics`), or None.

    Needed because the Distiller's steps compute no `y_pred` of the whole
    model for `compute_metrics`: they update these metrics with the
    student's logits themselves, and report them beside their own trackers.
    """
    return model._compile_metrics


def is_functional(model):
    """Whether `model` is a functional model (it has a graph of nodes).

    Needed because the class `keras.Model(inputs, outputs)` returns
    (`Functional`) is not exported; its graph is what `taps.py` runs.
    """
    return hasattr(model, "_nodes_by_depth")


def sequential_graph(model):
    """The functional model a built `keras.Sequential` runs, or None (unbuilt).

    Needed because a Sequential exposes its inputs and outputs but not the
    graph behind them, which tapping runs to read its layers' outputs.
    """
    return getattr(model, "_functional", None)


def run_through_graph(model, inputs, operation_fn):
    """Runs the functional `model` on `inputs`, calling each of its layers
    (and ops) through `operation_fn(operation)`, which returns the callable
    to use in its place.

    Needed to read (`taps.tap_model`) or change (LFMA's Feature Map Cutout)
    the output of inner layers in one forward pass that shares every layer
    and weight with `model`; `keras.Model(model.inputs, layer.output)` reads
    one layer but cannot change what the next layers get.
    """
    return model._run_through_graph(inputs, operation_fn=operation_fn)


def output_operation(tensor):
    """The layer (or op) that made the symbolic `tensor`.

    Needed to tell what a model's output layer is (a softmax?) when the
    model is nested inside another: `model.layers[-1]` is not always it.
    """
    return tensor._keras_history.operation


def all_layers(model):
    """Every layer inside `model`, nested models' layers included (not `model`).

    Needed because `model.layers` lists only the top level.
    """
    return model._flatten_layers(include_self=False)


def strategy_supports_no_merge_call():
    """Whether the current strategy updates variables without `merge_call`.

    Needed to run a conditional optimizer step under a strategy: Keras's own
    `LossScaleOptimizer` asks the same before it picks how to skip a step.
    """
    return tf.__internal__.distribute.strategy_supports_no_merge_call()


def in_multi_worker_mode(strategy):
    """Whether a `MultiWorkerMirroredStrategy` spans several workers.

    Needed to know how Keras will reduce a step's results: it asks exactly
    this (and the class) before it reduces them with
    `strategy.reduce("MEAN", value, axis=0)`, which rejects scalars
    (`distribute.step_results`); on a single worker it reduces them as a
    local strategy's. No public API tells the two cases apart.
    """
    return strategy.extended._in_multi_worker_mode()
