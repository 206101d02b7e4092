"""The branch builder shared by LFMA heads and AID branches, against NumPy."""

import keras
import numpy as np
import pytest

from kerakd.blocks import branches

BN_EPSILON = 1e-5


def randomize(model, seed=0):
    """Fixed random values for every weight (positive BatchNorm variances)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if "seed_generator" in v.path:
            continue
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
        else:
            v.assign(0.5 * rng.normal(size=v.shape).astype("float32"))


def np_depthwise(x, kernel, strides):
    """3x3 depthwise convolution with one pixel of zero padding on every side."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    height = (x.shape[1] - 1) // strides + 1
    width = (x.shape[2] - 1) // strides + 1
    out = np.zeros((x.shape[0], height, width, x.shape[3]), "float64")
    for i in range(3):
        for j in range(3):
            window = padded[:, i:i + strides * height:strides, j:j + strides * width:strides]
            out += window * kernel[i, j, :, 0]
    return out


def np_batch_norm(x, layer, training):
    gamma, beta, moving_mean, moving_var = layer.get_weights()
    if training:
        mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    else:
        mean, var = moving_mean, moving_var
    return (x - mean) / np.sqrt(var + BN_EPSILON) * gamma + beta


def numpy_branch(model, name, x, strides, training=False):
    """The separable branch `name` of `model`, re-implemented from docs/methods/lfma.md."""
    x = np.asarray(x, "float64")
    for k, stride in enumerate(strides, start=1):
        prefix = f"{name}_block{k}"
        for part, step in ((1, stride), (2, 1)):
            x = np_depthwise(x, model.get_layer(f"{prefix}_dw{part}").get_weights()[0], step)
            x = x @ model.get_layer(f"{prefix}_pw{part}").get_weights()[0][0, 0]
            x = np.maximum(np_batch_norm(x, model.get_layer(f"{prefix}_bn{part}"), training), 0)
    return x.mean(axis=(1, 2))


def branch_model(input_shape, target_shape, name="branch"):
    inputs, features = branches.branch_features("separable", input_shape, target_shape, name)
    return keras.Model(inputs, features)


@pytest.mark.parametrize(
    "tap, target, plan",
    [
        ((8, 16, 16, 16), (8, 4, 4, 64), [(32, 2), (64, 2)]),  # ResNet widths double
        ((8, 32, 32, 64), (8, 4, 4, 512), [(128, 2), (256, 2), (512, 2)]),
        ((8, 28, 28, 16), (8, 7, 7, 64), [(32, 2), (64, 2)]),  # 28 -> 14 -> 7
        ((8, 7, 7, 32), (8, 4, 4, 64), [(64, 2)]),  # ceil(7 / 2) = 4
        ((8, 16, 16, 8), (8, 4, 4, 8), [(8, 2), (8, 2)]),
        ((8, 4, 4, 64), (8, 4, 4, 64), [(64, 1)]),  # already there: one block
    ],
)
def test_plan_halves_until_the_last_stage_size_and_width(tap, target, plan):
    assert branches.branch_plan(tap, target) == plan
    model = branch_model(tap, target)
    assert tuple(model.output.shape) == (None, target[-1])


@pytest.mark.parametrize(
    "tap, target",
    [
        ((8, 16, 16, 8), (8, 5, 5, 32)),  # 16 -> 8 -> 4 skips 5
        ((8, 4, 4, 8), (8, 8, 8, 32)),  # the target is larger
        ((8, 16, 8, 8), (8, 4, 4, 32)),  # height and width need different steps
    ],
)
def test_unreachable_sizes_are_a_clear_error(tap, target):
    with pytest.raises(ValueError, match="cannot take a tap of spatial size"):
        branches.branch_plan(tap, target)


def test_unknown_builder_lists_the_registered_ones():
    with pytest.raises(ValueError, match="separable"):
        branches.check_builder("separabel")


@pytest.mark.parametrize("training", [False, True])
def test_separable_branch_matches_numpy(training):
    model = branch_model((8, 16, 16, 8), (8, 4, 4, 32))
    randomize(model)
    x = np.random.default_rng(1).normal(size=(8, 16, 16, 8)).astype("float32")
    expected = numpy_branch(model, "branch", x, strides=(2, 2), training=training)
    got = model(x, training=training)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-5)
