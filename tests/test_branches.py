"""The branch builder shared by LFMA heads and AID branches, against NumPy."""

import keras
import numpy as np
import pytest

from kerakd.blocks import branches
from reference import numpy_branch
from reference import randomize_weights as randomize

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
