"""Zoo, first part: CIFAR ResNets and WRNs build, tap where documented, and
match the published parameter counts."""

import numpy as np
import pytest

import kerakd
from kerakd.taps import resolve_taps

CIFAR_MODELS = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
                "resnet110", "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2",
                "wrn_40_1", "wrn_40_2"]


def trainable_params(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.parametrize(
    "name, published",
    [("resnet8x4", 1.23e6), ("resnet32x4", 7.43e6), ("wrn_40_2", 2.26e6), ("wrn_16_2", 0.70e6)],
)
def test_parameter_counts_match_the_published_ones(name, published):
    model = kerakd.models.get(name, num_classes=100, input_shape=(32, 32, 3))
    assert abs(trainable_params(model) - published) / published < 0.02


def stage_widths(name):
    if name.startswith("wrn"):
        k = int(name.split("_")[2])
        return [16 * k, 32 * k, 64 * k]
    return [64, 128, 256] if name.endswith("x4") else [16, 32, 64]


@pytest.mark.parametrize("name", CIFAR_MODELS)
@pytest.mark.parametrize("input_shape", [(32, 32, 3), (28, 28, 1)])
def test_builds_and_taps_have_documented_shapes(name, input_shape):
    model = kerakd.models.get(name, num_classes=10, input_shape=input_shape)
    assert tuple(model.output.shape) == (None, 10)
    size = input_shape[0]
    sizes = [size, (size + 1) // 2, (size + 3) // 4]
    stages = [model.get_layer(n).output.shape for n in resolve_taps(model, "stages")]
    assert [tuple(s[1:]) for s in stages] == [
        (h, h, c) for h, c in zip(sizes, stage_widths(name))
    ]
    depth = int(name.split("_")[1]) if name.startswith("wrn") else int(name[6:].split("x")[0])
    blocks_per_stage = (depth - 4) // 6 if name.startswith("wrn") else (depth - 2) // 6
    expected_blocks = 3 * blocks_per_stage // (2 if depth >= 110 else 1)
    assert len(resolve_taps(model, "blocks")) == expected_blocks
    assert tuple(model.get_layer("pool").output.shape) == (None, stage_widths(name)[-1])


def test_zoo_models_use_pytorch_batchnorm_epsilon():
    model = kerakd.models.get("wrn_16_1", 10)
    norms = [l for l in model.layers if l.__class__.__name__ == "BatchNormalization"]
    assert norms and all(l.epsilon == 1e-5 and l.momentum == 0.9 for l in norms)


def test_wrn_taps_follow_semckd_and_afd_conventions():
    model = kerakd.models.get("wrn_16_2", 10)
    # SemCKD: raw residual sums; AFD: the next block's BN + ReLU.
    assert model.get_layer("stage1").__class__.__name__ == "Add"
    assert model.get_layer("block1").__class__.__name__ == "ReLU"
    assert model.get_layer("block6").__class__.__name__ == "ReLU"


def test_unknown_model_name_suggests():
    with pytest.raises(ValueError, match="Did you mean.*resnet8x4"):
        kerakd.models.get("resnet8x8")


def test_equal_shaped_kernels_start_different_and_follow_the_global_seed():
    # A shared initializer instance would hold one seed and give every
    # equal-shaped conv the same kernel.
    import keras

    keras.utils.set_random_seed(3)
    model = kerakd.models.get("resnet20", 10)
    first = model.get_layer("s1b1_conv1").kernel.numpy()
    assert not np.array_equal(first, model.get_layer("s1b2_conv1").kernel.numpy())
    keras.utils.set_random_seed(3)
    again = kerakd.models.get("resnet20", 10).get_layer("s1b1_conv1").kernel.numpy()
    np.testing.assert_array_equal(first, again)
