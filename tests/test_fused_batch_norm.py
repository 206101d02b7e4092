"""kerakd BatchNorm's fused training path (TensorFlow's FusedBatchNormV3).

docs/methods/conventions.md, "BatchNorm": on 4-D channels-last inputs with
per-replica statistics the layer trains through the fused kernel. Here:
its outputs, input/gamma/beta gradients and moving statistics over two
training steps equal a float64 NumPy reference and the op-by-op path
(`fused=False`), eagerly, in a `tf.function` and under XLA; the kernel is
in the traced graph exactly where it should be; mixed precision, 2 replicas
(per-replica and synchronized), a zoo model's step and saving.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd

EPSILON, MOMENTUM = 1e-5, 0.9
HERE = os.path.dirname(__file__)


def np_training_step(x, gamma, beta, dy, eps=EPSILON):
    """PyTorch's training-mode BatchNorm over all but the last axis, float64:
    `y`, the gradients of `sum(y * dy)` for x, gamma and beta, and the batch
    mean and unbiased variance the moving statistics are updated with."""
    channels = x.shape[-1]
    x, dy = np.asarray(x, "float64"), np.asarray(dy, "float64")
    flat, dy_flat = x.reshape(-1, channels), dy.reshape(-1, channels)
    n = flat.shape[0]
    mean, var = flat.mean(0), flat.var(0)
    x_hat = (x - mean) / np.sqrt(var + eps)
    x_hat_flat = x_hat.reshape(-1, channels)
    dgamma, dbeta = (dy_flat * x_hat_flat).sum(0), dy_flat.sum(0)
    dx = gamma / np.sqrt(var + eps) * (dy - dy_flat.mean(0) - x_hat * (dgamma / n))
    # One value per channel: no unbiased variance; the update keeps the 0.
    return gamma * x_hat + beta, dx, dgamma, dbeta, mean, var * n / max(n - 1, 1)


def np_two_steps(batches, dys, gamma, beta):
    """[(y, dx, dgamma, dbeta, moving_mean, moving_variance)] after each step."""
    moving_mean, moving_var = np.zeros(gamma.shape), np.ones(gamma.shape)
    steps = []
    for x, dy in zip(batches, dys):
        y, dx, dgamma, dbeta, mean, unbiased = np_training_step(x, gamma, beta, dy)
        moving_mean = MOMENTUM * moving_mean + (1 - MOMENTUM) * mean
        moving_var = MOMENTUM * moving_var + (1 - MOMENTUM) * unbiased
        steps.append((y, dx, dgamma, dbeta, moving_mean, moving_var))
    return steps


def data(shape, seed=0):
    rng = np.random.default_rng(seed)
    batches = [rng.normal(2.0, 3.0, shape).astype("float32") for _ in range(2)]
    dys = [rng.normal(size=shape).astype("float32") for _ in range(2)]
    gamma, beta = rng.uniform(0.5, 1.5, shape[-1]), rng.normal(size=shape[-1])
    return batches, dys, gamma, beta


def layer_with(gamma, beta, shape, **kwargs):
    layer = kerakd.nn.BatchNormalization(**kwargs)
    layer.build(shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return layer


def training_step(layer, mode="eager"):
    """`step(x, dy) -> (y, dx, dgamma, dbeta)` of `sum(y * dy)`: eager, a
    `tf.function` ("graph") or an XLA-compiled one ("xla")."""

    def step(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") * dy)
        return (y, *tape.gradient(loss, [x, layer.gamma, layer.beta]))

    return step if mode == "eager" else tf.function(step, jit_compile=mode == "xla")


def run_two_steps(layer, batches, dys, mode="eager"):
    step = training_step(layer, mode)
    steps = []
    for x, dy in zip(batches, dys):
        y, dx, dgamma, dbeta = step(tf.constant(x), tf.constant(dy))
        steps.append(tuple(np.asarray(tf.cast(t, "float32")) for t in (y, dx, dgamma, dbeta))
                     + (layer.moving_mean.numpy(), layer.moving_variance.numpy()))
    return steps


def op_types(layer, shape, dtype="float32"):
    """The traced training step's ops: `{type: [op, ...]}`."""
    spec = tf.TensorSpec(shape, dtype)
    graph = training_step(layer, "graph").get_concrete_function(
        spec, tf.TensorSpec(shape, "float32")).graph
    found = {}
    for op in graph.get_operations():
        found.setdefault(op.type, []).append(op)
    return found


NAMES = ("y", "dx", "dgamma", "dbeta", "moving_mean", "moving_variance")


def assert_steps_close(actual, expected, rtol, atol):
    for step, (a_step, e_step) in enumerate(zip(actual, expected), start=1):
        for name, a, e in zip(NAMES, a_step, e_step):
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol,
                                       err_msg=f"{name} after step {step}")


# -- the values: float64 NumPy, and the op-by-op path ------------------------

@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("shape", [(6, 5, 5, 4), (2, 3, 7, 3), (1, 1, 1, 3)],
                         ids=["images", "odd sizes", "one value per channel"])
def test_fused_steps_equal_float64_reference(shape, mode):
    batches, dys, gamma, beta = data(shape)
    layer = layer_with(gamma, beta, shape)
    assert "FusedBatchNormV3" in op_types(layer, shape)
    actual = run_two_steps(layer, batches, dys, mode)
    assert_steps_close(actual, np_two_steps(batches, dys, gamma, beta), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("shape", [(6, 5, 5, 4), (2, 3, 7, 3)], ids=["images", "odd sizes"])
def test_fused_steps_equal_the_op_by_op_path(shape, mode):
    batches, dys, gamma, beta = data(shape, seed=1)
    fused = run_two_steps(layer_with(gamma, beta, shape), batches, dys, mode)
    unfused = run_two_steps(layer_with(gamma, beta, shape, fused=False), batches, dys, mode)
    assert_steps_close(fused, unfused, rtol=1e-5, atol=1e-5)
    # The moving variance takes the unbiased batch variance (PyTorch's), not
    # the biased one Keras's core layer takes.
    biased = batches[0].reshape(-1, shape[-1]).var(0)
    assert not np.allclose(fused[0][-1], MOMENTUM + (1 - MOMENTUM) * biased, rtol=1e-5)


def test_float64_goes_op_by_op_in_float64():
    shape = (4, 3, 3, 2)
    batches, dys, gamma, beta = data(shape, seed=2)
    batches, dys = [b.astype("float64") for b in batches], [d.astype("float64") for d in dys]
    layer = layer_with(gamma, beta, shape, dtype="float64")
    assert "FusedBatchNormV3" not in op_types(layer, shape, "float64")

    def step(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * dy)
        return tape.gradient(loss, [x, layer.gamma, layer.beta])

    for x, dy, expected in zip(batches, dys, np_two_steps(batches, dys, gamma, beta)):
        y = layer(x, training=False)  # compiles nothing: just the dtype
        assert y.dtype == tf.float64
        grads = step(tf.constant(x), tf.constant(dy))
        for name, a, e in zip(NAMES[1:], [*grads, layer.moving_mean, layer.moving_variance],
                              expected[1:]):
            np.testing.assert_allclose(np.asarray(a), e, rtol=1e-10, atol=1e-12, err_msg=name)


# -- which path the traced step takes ----------------------------------------

@pytest.mark.parametrize("kwargs, shape, fused", [
    ({}, (4, 3, 3, 8), True),
    ({"fused": True}, (4, 3, 3, 8), True),
    ({"fused": False}, (4, 3, 3, 8), False),
    ({"synchronized": True}, (4, 3, 3, 8), False),
    ({"axis": 1}, (4, 8, 3, 3), False),
    ({}, (16, 8), False),
    ({}, (4, 3, 8), False),
], ids=["default", "fused=True", "fused=False", "synchronized", "channels first", "2-D", "3-D"])
def test_the_fused_kernel_is_in_the_traced_step_exactly_where_it_can_run(kwargs, shape, fused):
    layer = kerakd.nn.BatchNormalization(**kwargs)
    layer.build(shape)
    ops = op_types(layer, shape)
    assert ("FusedBatchNormV3" in ops) == fused
    assert ("FusedBatchNormGradV3" in ops) == fused
    # Inference is Keras's own arithmetic either way (core_keras's copy is exact).
    assert "FusedBatchNormV3" not in {
        op.type for op in tf.function(lambda x: layer(x, training=False))
        .get_concrete_function(tf.TensorSpec(shape)).graph.get_operations()}


def test_fused_true_refuses_what_the_kernel_cannot_run():
    with pytest.raises(ValueError, match="cannot synchronize"):
        kerakd.nn.BatchNormalization(fused=True, synchronized=True)
    with pytest.raises(ValueError, match="4-D inputs with the channels last"):
        kerakd.nn.BatchNormalization(fused=True).build((8, 4))
    with pytest.raises(ValueError, match="dtype float64"):
        kerakd.nn.BatchNormalization(fused=True, dtype="float64").build((2, 3, 3, 4))
    layer = kerakd.nn.BatchNormalization(fused=True)
    with pytest.raises(ValueError, match="takes no mask"):
        layer(np.ones((2, 3, 3, 4), "float32"), training=True, mask=np.ones((2, 3, 3), bool))


# -- mixed precision: half inputs into the kernel, float32 statistics --------

@pytest.mark.parametrize("policy, tolerance", [("mixed_float16", 2e-3), ("mixed_bfloat16", 1e-2)])
def test_mixed_precision_feeds_the_kernel_half_inputs(policy, tolerance):
    shape = (4, 5, 5, 3)
    batches, dys, gamma, beta = data(shape, seed=3)
    half = policy.split("_")[1]
    fused_layer = layer_with(gamma, beta, shape, dtype=policy)
    ops = op_types(fused_layer, shape)
    assert [op.get_attr("T") for op in ops["FusedBatchNormV3"]] == [tf.as_dtype(half)]
    assert "FusedBatchNormGradV3" in ops
    fused = run_two_steps(fused_layer, batches, dys, "graph")
    unfused = run_two_steps(layer_with(gamma, beta, shape, dtype=policy, fused=False),
                            batches, dys, "graph")
    assert fused_layer(batches[0], training=True).dtype == tf.as_dtype(half)
    assert fused_layer.moving_variance.dtype == "float32"
    scale = [max(np.max(np.abs(e)), 1.0) for e in unfused[0]]
    for step_f, step_u in zip(fused, unfused):
        for name, a, e, s in zip(NAMES, step_f, step_u, scale):
            np.testing.assert_allclose(a, e, rtol=tolerance, atol=tolerance * s, err_msg=name)
    # The statistics are float32 ones of the half-rounded inputs.
    rounded = [np.asarray(tf.cast(tf.cast(b, half), "float32")) for b in batches]
    expected = np_two_steps(rounded, dys, gamma, beta)
    for name, a, e in zip(NAMES[4:], fused[1][4:], expected[1][4:]):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6, err_msg=name)


# -- 2 replicas: per-replica statistics fused, synchronized ones op by op ----

@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    out = tmp_path_factory.mktemp("replicas") / "results.npz"
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "fused_batch_norm_replicas.py"), str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.slow
def test_per_replica_statistics_run_the_fused_kernel_on_each_replica(replicas):
    r = replicas
    assert r["per_replica_fused_ops"] == 2  # one per replica
    half = r["x"].shape[0] // 2
    for replica in range(2):
        rows = slice(replica * half, (replica + 1) * half)
        y, dx, dgamma, dbeta, mean, unbiased = np_training_step(
            r["x"][rows], r["gamma"], r["beta"], r["dy"][rows])
        for name, expected in (("y", y), ("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta),
                               ("moving_mean", (1 - MOMENTUM) * mean),
                               ("moving_variance", MOMENTUM + (1 - MOMENTUM) * unbiased)):
            np.testing.assert_allclose(r[f"per_replica_{name}"][replica], expected,
                                       rtol=1e-5, atol=2e-5, err_msg=f"{name}, replica {replica}")


@pytest.mark.slow
def test_synchronized_statistics_stay_op_by_op_over_the_global_batch(replicas):
    r = replicas
    assert r["synchronized_fused_ops"] == 0
    y, dx, _, _, mean, unbiased = np_training_step(r["x"], r["gamma"], r["beta"], r["dy"])
    half = r["x"].shape[0] // 2
    np.testing.assert_allclose(r["synchronized_y"].reshape(y.shape), y, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(r["synchronized_dx"].reshape(dx.shape), dx, rtol=1e-5, atol=2e-5)
    for replica in range(2):
        rows = slice(replica * half, (replica + 1) * half)
        x_hat = (r["x"][rows] - mean) / np.sqrt(r["x"].reshape(-1, 5).var(0) + EPSILON)
        np.testing.assert_allclose(r["synchronized_dgamma"][replica],
                                   (r["dy"][rows] * x_hat).reshape(-1, 5).sum(0), rtol=1e-4,
                                   atol=2e-5)
        np.testing.assert_allclose(r["synchronized_moving_mean"][replica],
                                   (1 - MOMENTUM) * mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["synchronized_moving_variance"][replica],
                                   MOMENTUM + (1 - MOMENTUM) * unbiased, rtol=1e-5)


# -- a zoo model's step, saving and the deployable copy ----------------------

def unfused_copy(model):
    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, kerakd.nn.BatchNormalization):
            config["fused"] = False
        return type(layer).from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def test_a_zoo_models_fit_step_is_the_op_by_op_step():
    keras.utils.set_random_seed(0)
    fused = kerakd.models.get("resnet8", num_classes=5, input_shape=(12, 12, 3))
    unfused = unfused_copy(fused)
    initial = fused.get_weights()
    bn = next(layer for layer in fused.layers if isinstance(layer, kerakd.nn.BatchNormalization))
    assert "FusedBatchNormV3" in op_types(bn, (8, *bn.input.shape[1:]))
    rng = np.random.default_rng(4)
    images = rng.normal(size=(8, 12, 12, 3)).astype("float32")
    labels = rng.integers(0, 5, 8)
    losses = []
    for model in (fused, unfused):
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(images, labels, batch_size=4, epochs=1, shuffle=False, verbose=0)
        losses.append(history.history["loss"][0])
    # Two steps: the second batch's loss reads the first step's update.
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    for a, b in zip(fused.weights, unfused.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    moved = max(float(np.max(np.abs(a.numpy() - b))) for a, b in zip(fused.weights, initial))
    assert moved > 1e-3, "the steps must move the weights for the comparison to mean anything"


def test_saving_keeps_the_configuration_and_core_keras_drops_the_switch(tmp_path):
    default = kerakd.nn.BatchNormalization()
    assert default.get_config().keys() == keras.layers.BatchNormalization().get_config().keys()
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, kerakd.nn.BatchNormalization(fused=False, name="bn")(inputs))
    model.get_layer("bn").moving_variance.assign([0.5, 2.0, 3.0])
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("bn")) is kerakd.nn.BatchNormalization
    assert loaded.get_layer("bn").fused is False
    images = np.random.default_rng(5).normal(size=(2, 4, 4, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(model(images)))
    core = kerakd.models.core_keras(model)
    assert type(core.get_layer("bn")) is keras.layers.BatchNormalization
    np.testing.assert_array_equal(np.asarray(core(images)), np.asarray(model(images)))


# -- benchmarks/batch_norm_speed.py: a smoke run (it works, not its speed) ----

@pytest.mark.slow
def test_the_speed_benchmark_runs_and_compares_the_paths(tmp_path):
    script = os.path.join(HERE, os.pardir, "benchmarks", "batch_norm_speed.py")
    result = subprocess.run(
        [sys.executable, script, "--cases=4x4x512", "--options=fused,unfused,inference,"
         "inference_fused", "--models=resnet8", "--batch_size=4", "--rounds=1", "--warmup=0",
         f"--results_dir={tmp_path}"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("batch_norm_speed-*.json")
    report = json.loads(path.read_text())
    assert set(report["layer"]["median_ms"]) == {
        f"4x4x512 {o}" for o in ("fused", "unfused", "inference", "inference_fused")}
    differences = report["layer"]["max_relative_difference"]
    assert set(differences) == {"4x4x512 fused", "4x4x512 inference_fused"}
    assert max(differences.values()) < 1e-4
    model = report["models"]["resnet8"]
    np.testing.assert_allclose(model["fused_loss"], model["unfused_loss"], rtol=1e-5)
    assert "| fused |" in result.stdout and "| resnet8 |" in result.stdout
