"""kerakd.compat: every private Keras/TensorFlow API kerakd uses still exists
and does what kerakd relies on. An upgrade of Keras or TensorFlow that drops
one fails here, by name."""

import inspect

import keras
import numpy as np
import tensorflow as tf

from kerakd import compat


def functional():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="logits")(hidden))


def test_the_symbolic_build_hook_the_distiller_overrides_is_still_called():
    hook = getattr(keras.Model, compat.SYMBOLIC_BUILD_HOOK)
    assert list(inspect.signature(hook).parameters) == ["self", "iterator", "data_batch"]
    # The Distiller's override only matters while fit and evaluate call it.
    for step in (keras.Model.fit, keras.Model.evaluate):
        assert f"{compat.SYMBOLIC_BUILD_HOOK}(iterator=" in inspect.getsource(step)


def test_creation_strategy_tells_a_strategy_scope_from_none():
    assert compat.creation_strategy(functional()) is None
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = functional()
    assert compat.creation_strategy(model) is strategy


def test_compile_metrics_are_the_compiled_ones():
    model = functional()
    assert compat.compile_metrics(model) is None
    model.compile("sgd", metrics=["accuracy"])
    compiled = compat.compile_metrics(model)
    compiled.update_state(np.array([1]), np.array([[0.0, 1.0]]))
    assert float(compiled.result()["accuracy"]) == 1.0


def test_functional_and_sequential_graphs():
    assert compat.is_functional(functional())
    sequential = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert compat.is_functional(compat.sequential_graph(sequential))
    assert compat.sequential_graph(keras.Sequential([keras.layers.Dense(2)])) is None
    assert not compat.is_functional(keras.layers.Dense(2))


def test_run_through_graph_routes_every_layer_through_operation_fn():
    model = functional()
    seen = []

    def operation_fn(operation):
        def call(*args, **kwargs):
            seen.append(operation.name)
            return operation(*args, **kwargs) * 2.0

        return call

    x = np.ones((1, 4), "float32")
    doubled = compat.run_through_graph(model, x, operation_fn)
    assert seen == ["hidden", "logits"]
    expected = model.get_layer("logits")(2.0 * model.get_layer("hidden")(x)) * 2.0
    np.testing.assert_allclose(doubled, expected, rtol=1e-6)


def test_output_operation_and_all_layers():
    inner = functional()
    outer_inputs = keras.Input((4,))
    outer = keras.Model(outer_inputs, inner(outer_inputs))
    assert compat.output_operation(inner.outputs[0]) is inner.get_layer("logits")
    assert compat.output_operation(outer.outputs[0]) is inner
    names = [layer.name for layer in compat.all_layers(outer)]
    assert {"hidden", "logits", inner.name} <= set(names) and outer.name not in names


def test_strategy_queries():
    assert compat.strategy_supports_no_merge_call() in (True, False)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert not compat.in_multi_worker_mode(strategy)  # one worker: local
