"""kerakd.nn: the reference code's initializers and PyTorch's BatchNorm.

docs/methods/conventions.md, "Initialization" and "BatchNorm": every zoo model
starts as its reference zoo does, every method module as its official code
does (PyTorch's defaults unless that code sets its own), and BatchNorm's
moving variance is updated with the unbiased batch variance.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd
from kerakd import compat
from kerakd.nn import initializers

# -- initializers: the empirical distribution of a large kernel -------------

UNIFORM, NORMAL = "uniform", "normal"
INITIALIZER_CASES = {
    # name: (initializer, kernel shape, distribution, PyTorch bound or std)
    "torch_default dense": (lambda: initializers.torch_default("dense"), (2048, 256),
                            UNIFORM, 1 / math.sqrt(2048)),
    "torch_default conv": (lambda: initializers.torch_default("conv"), (3, 3, 256, 128),
                           UNIFORM, 1 / math.sqrt(9 * 256)),
    # PyTorch's depthwise weight (C, 1, 3, 3) has fan-in 9.
    "torch_default depthwise": (lambda: initializers.torch_default("depthwise"),
                                (3, 3, 20000, 1), UNIFORM, 1 / 3),
    "torch_default_bias": (lambda: initializers.torch_default_bias(300), (200000,),
                           UNIFORM, 1 / math.sqrt(300)),
    "kaiming_normal_fan_out conv": (lambda: initializers.kaiming_normal_fan_out("conv"),
                                    (3, 3, 64, 512), NORMAL, math.sqrt(2 / (9 * 512))),
    # ... and fan-out 9 * C (RepDistiller's MobileNetV2 depthwise kernels).
    "kaiming_normal_fan_out depthwise": (
        lambda: initializers.kaiming_normal_fan_out("depthwise"), (3, 3, 20000, 1),
        NORMAL, math.sqrt(2 / (9 * 20000))),
    "xavier_normal": (initializers.xavier_normal, (500, 700), NORMAL, math.sqrt(2 / 1200)),
    "normal": (lambda: initializers.normal(0.01), (1000, 500), NORMAL, 0.01),
}


@pytest.mark.parametrize("name", sorted(INITIALIZER_CASES))
def test_initializer_matches_its_formula(name):
    make, shape, distribution, scale = INITIALIZER_CASES[name]
    values = np.asarray(make()(shape)).ravel().astype("float64")
    assert abs(values.mean()) < 0.03 * scale
    if distribution == UNIFORM:
        bound = scale
        assert np.abs(values).max() <= bound * (1 + 1e-6)
        assert np.abs(values).max() >= 0.97 * bound
        assert values.std() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    else:
        assert values.std() == pytest.approx(scale, rel=0.03)
        # Not truncated: 4.55% of a normal lies beyond 2 std (none of Keras's
        # truncated normals does).
        beyond = np.mean(np.abs(values) > 2 * scale)
        assert 0.040 < beyond < 0.051


def test_initializers_are_fresh_objects_with_distinct_draws():
    a, b = initializers.torch_default("conv"), initializers.torch_default("conv")
    assert a is not b
    assert not np.array_equal(np.asarray(a((3, 3, 4, 4))), np.asarray(b((3, 3, 4, 4))))


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="Unknown layer kind 'linear'"):
        initializers.torch_default("linear")


# -- which initializer every layer uses ---------------------------------------

def _config(initializer):
    config = keras.initializers.serialize(initializer)
    return config["class_name"], {k: v for k, v in config["config"].items()
                                  if k != "seed" and v is not None}


def torch_default_kernel(kind):
    mode = "fan_out" if kind == "depthwise" else "fan_in"
    return ("VarianceScaling", {"scale": 1 / 3, "mode": mode, "distribution": "uniform"})


def kaiming_fan_out_kernel(kind):
    mode = "fan_in" if kind == "depthwise" else "fan_out"
    return ("VarianceScaling", {"scale": 2.0, "mode": mode, "distribution": "untruncated_normal"})


def torch_default_bias(fan_in):
    bound = 1 / math.sqrt(fan_in)
    return ("RandomUniform", {"minval": -bound, "maxval": bound})


ZEROS = ("Zeros", {})
NORMAL_001 = ("RandomNormal", {"mean": 0.0, "stddev": 0.01})


def weighted_layers(layers):
    """`(layer, kind, kernel initializer config, bias initializer config or None)`."""
    for layer in layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kind, kernel = "depthwise", layer.depthwise_initializer
        elif isinstance(layer, keras.layers.Conv2D):
            kind, kernel = "conv", layer.kernel_initializer
        elif isinstance(layer, keras.layers.Dense):
            kind, kernel = "dense", layer.kernel_initializer
        else:
            continue
        bias = _config(layer.bias_initializer) if layer.use_bias else None
        yield layer, kind, _config(kernel), bias


def fan_in(layer, kind):
    shape = (layer.depthwise_kernel if kind == "depthwise" else layer.kernel).shape
    return int(np.prod(shape[:2])) if kind == "depthwise" else int(np.prod(shape[:-1]))


def assert_normalization_is_pytorchs(layers):
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert isinstance(layer, kerakd.nn.BatchNormalization), layer.name
            assert (layer.momentum, layer.epsilon) == (0.9, 1e-5), layer.name


# Zoo model: (conv kernel, classifier kernel, classifier bias), as the
# reference zoo's init loop leaves them (RepDistiller/mdistiller models/,
# torchvision resnet.py, FRSKD's CIFAR ResNet-18).
ZOO_INITS = {
    "resnet8": (kaiming_fan_out_kernel, "torch_default", "torch_default"),
    "resnet8x4": (kaiming_fan_out_kernel, "torch_default", "torch_default"),
    "wrn_16_1": (kaiming_fan_out_kernel, "torch_default", "zeros"),
    "vgg8": (kaiming_fan_out_kernel, "normal", "zeros"),
    "mobilenetv2": (kaiming_fan_out_kernel, "normal", "zeros"),
    "shufflenetv1": (torch_default_kernel, "torch_default", "torch_default"),
    "shufflenetv2": (torch_default_kernel, "torch_default", "torch_default"),
    "resnet18": (kaiming_fan_out_kernel, "torch_default", "torch_default"),
    "resnet18_cifar": (torch_default_kernel, "torch_default", "torch_default"),
    "resnet50_cifar": (kaiming_fan_out_kernel, "torch_default", "torch_default"),
}


def test_every_zoo_family_is_listed():
    families = {"resnet8": "resnet_cifar", "wrn_16_1": "wrn", "vgg8": "vgg",
                "mobilenetv2": "mobilenetv2", "shufflenetv1": "shufflenet",
                "resnet18": "resnet_imagenet", "resnet50_cifar": "resnet50_cifar"}
    modules = {kerakd.models.registry.factory(n).__module__.rsplit(".", 1)[-1]
               for n in kerakd.models.available()}
    assert modules == set(families.values())
    assert set(families) <= set(ZOO_INITS)


@pytest.mark.parametrize("name", sorted(ZOO_INITS))
def test_zoo_model_is_initialized_as_its_reference(name):
    conv_kernel, classifier_kernel, classifier_bias = ZOO_INITS[name]
    model = kerakd.models.get(name, num_classes=10, input_shape=(32, 32, 3))
    checked = 0
    for layer, kind, kernel, bias in weighted_layers(model.layers):
        if layer.name == "logits":
            fan = fan_in(layer, kind)
            assert kernel == {"torch_default": torch_default_kernel("dense"),
                              "normal": NORMAL_001}[classifier_kernel]
            assert bias == {"torch_default": torch_default_bias(fan),
                            "zeros": ZEROS}[classifier_bias]
        else:
            assert kernel == conv_kernel(kind), layer.name
            # Only the reference VGG's convolutions have a bias, zeroed.
            assert bias == (ZEROS if name.startswith("vgg") else None), layer.name
        checked += 1
    assert checked > 3
    assert_normalization_is_pytorchs(model.layers)


# Method modules that the reference code initializes other than with
# PyTorch's defaults: none among the layers with kernels (AFD's positions,
# VID's log-scales, FRSKD's fusion weights and CRD's memory are weights of
# the method itself, checked in their own tests).
REQUIRED = {"crd": {"num_data": 16}}


def built_method(name):
    method = kerakd.methods.get(name, **REQUIRED.get(name, {}))
    student = kerakd.models.get("resnet8", 5, (16, 16, 3))
    teacher = kerakd.models.get("wrn_16_1", 5, (16, 16, 3)) if method.requires_teacher else None
    distiller = kerakd.Distiller(student, method, teacher)
    distiller.build((8, 16, 16, 3))
    return distiller.method


@pytest.mark.parametrize("name", kerakd.methods.available())
def test_method_modules_start_as_the_reference_code(name):
    method = built_method(name)
    layers = compat.all_layers(method)
    for layer, kind, kernel, bias in weighted_layers(layers):
        where = f"{name}: {layer.name}"
        assert kernel == torch_default_kernel(kind), where
        if bias is not None:
            assert bias == torch_default_bias(fan_in(layer, kind)), where
    assert_normalization_is_pytorchs(layers)


def test_afd_positions_are_xavier_normal(monkeypatch):
    made = []
    original = initializers.xavier_normal
    monkeypatch.setattr(initializers, "xavier_normal", lambda: made.append(1) or original())
    method = built_method("afd")
    assert len(made) == 2
    assert method.teacher_positions.shape[-1] == method.qk_dim


# -- BatchNormalization: PyTorch's update, against NumPy ---------------------

def numpy_batchnorm_steps(batches, gamma, beta, momentum=0.1, eps=1e-5):
    """PyTorch's training-mode BatchNorm, float64: outputs of each step and
    the running statistics after each."""
    channels = batches[0].shape[-1]
    mean, var = np.zeros(channels), np.ones(channels)
    outputs, stats = [], []
    for x in batches:
        flat = x.reshape(-1, channels).astype("float64")
        n = flat.shape[0]
        m, v = flat.mean(0), flat.var(0)
        outputs.append(gamma * (x - m) / np.sqrt(v + eps) + beta)
        mean = (1 - momentum) * mean + momentum * m
        var = (1 - momentum) * var + momentum * v * n / (n - 1)
        stats.append((mean.copy(), var.copy()))
    return outputs, stats


@pytest.mark.parametrize("shape", [(6, 5, 5, 4), (16, 4), (3, 7, 4)],
                         ids=["images (fused kernel)", "vectors", "sequences"])
def test_batchnorm_two_training_steps_equal_pytorchs(shape):
    rng = np.random.default_rng(0)
    batches = [rng.normal(2.0, 3.0, size=shape).astype("float32") for _ in range(2)]
    gamma = rng.uniform(0.5, 1.5, shape[-1])
    beta = rng.normal(size=shape[-1])
    layer = kerakd.nn.BatchNormalization()
    layer.build(shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    expected_outputs, expected_stats = numpy_batchnorm_steps(batches, gamma, beta)
    for x, expected, (mean, var) in zip(batches, expected_outputs, expected_stats):
        np.testing.assert_allclose(np.asarray(layer(x, training=True)), expected,
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-6)
    # Inference normalizes with the moving statistics, as Keras does.
    mean, var = expected_stats[-1]
    x = batches[0]
    np.testing.assert_allclose(
        np.asarray(layer(x, training=False)),
        gamma * (x - mean) / np.sqrt(var + 1e-5) + beta, rtol=1e-5, atol=1e-5)


def test_batchnorm_differs_from_keras_only_in_the_moving_variance():
    x = np.random.default_rng(1).normal(size=(4, 3, 3, 8)).astype("float32")
    ours, core = kerakd.nn.BatchNormalization(), keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    results = []
    for layer in (ours, core):
        layer.build(x.shape)
        variables = [layer.gamma, layer.beta]
        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = layer(inputs, training=True)
            loss = tf.reduce_sum(y * tf.cos(y))
        results.append((y, tape.gradient(loss, [inputs, *variables]), layer.moving_mean.numpy(),
                        layer.moving_variance.numpy()))
    (y_a, g_a, mean_a, var_a), (y_b, g_b, mean_b, var_b) = results
    np.testing.assert_allclose(y_a, y_b, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_a, g_b):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mean_a, mean_b, rtol=1e-6)
    n = 4 * 3 * 3
    batch_var = (var_b - 0.9) / 0.1
    np.testing.assert_allclose(var_a, 0.9 + 0.1 * batch_var * n / (n - 1), rtol=1e-5)
    assert not np.allclose(var_a, var_b, rtol=1e-4)


def test_batchnorm_under_mixed_precision_keeps_float32_statistics():
    layer = kerakd.nn.BatchNormalization(dtype="mixed_bfloat16")
    x = np.random.default_rng(2).normal(size=(4, 3, 3, 2)).astype("float32")
    y = layer(tf.cast(x, "bfloat16"), training=True)
    assert y.dtype == tf.bfloat16
    assert layer.moving_variance.dtype == "float32"
    n = 36
    expected = 0.9 + 0.1 * np.asarray(tf.cast(tf.cast(x, "bfloat16"), "float32")).reshape(-1, 2).var(0) * n / (n - 1)
    np.testing.assert_allclose(layer.moving_variance.numpy(), expected, rtol=1e-4)


def test_batchnorm_refuses_renorm():
    with pytest.raises(ValueError, match="no batch renormalization"):
        kerakd.nn.BatchNormalization(renorm=True)


# -- core_keras: the deployable copy ------------------------------------------

def test_core_keras_swaps_the_layer_and_keeps_inference(tmp_path):
    model = kerakd.models.get("resnet8", num_classes=5, input_shape=(16, 16, 3))
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape))
    copy = kerakd.models.core_keras(model)
    assert copy is not model
    assert not [layer for layer in copy.layers if isinstance(layer, kerakd.nn.BatchNormalization)]
    assert [layer.name for layer in copy.layers] == [layer.name for layer in model.layers]
    images = rng.normal(size=(2, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(copy(images, training=False)),
                                  np.asarray(model(images, training=False)))
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert kerakd.models.core_keras(plain) is plain

