"""The second part of the zoo: VGG, MobileNetV2, ShuffleNet V1/V2, ImageNet ResNets."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from reference import make_dataset, make_images

import kerakd
from kerakd.models.shufflenet import channel_shuffle, split_channels
from kerakd.taps import resolve_taps, tap_model

# Stage-tap spatial sizes per input size, by stem and down-sampling pattern.
SPATIAL = {
    "vgg": {32: (16, 8, 4, 4), 28: (14, 7, 3, 3)},
    "mobilenetv2": {32: (16, 8, 4, 2), 28: (14, 7, 4, 2)},
    "shufflenet": {32: (16, 8, 4), 28: (14, 7, 4)},
    "resnet_cifar": {32: (32, 16, 8, 4), 28: (28, 14, 7, 4)},
    "resnet_imagenet": {32: (8, 4, 2, 1), 28: (7, 4, 2, 1), 224: (56, 28, 14, 7)},
}
VGG_CHANNELS = (128, 256, 512, 512)
RESNET_CHANNELS = (64, 128, 256, 512)
# name: (spatial family, stage-tap channels, blocks, published trainable parameters)
# Published counts: CRD/SemCKD tables (100 classes, 32 px) and torchvision
# (1000 classes, 224 px).
MODELS = {
    "vgg8": ("vgg", VGG_CHANNELS, 0, 3.96e6),
    "vgg11": ("vgg", VGG_CHANNELS, 0, None),
    "vgg13": ("vgg", VGG_CHANNELS, 0, 9.46e6),
    "vgg16": ("vgg", VGG_CHANNELS, 0, None),
    "vgg19": ("vgg", VGG_CHANNELS, 0, None),
    "mobilenetv2": ("mobilenetv2", (12, 16, 48, 160), 0, 0.81e6),
    "shufflenetv1": ("shufflenet", (240, 480, 960), 0, 0.95e6),
    "shufflenetv2": ("shufflenet", (116, 232, 464), 0, 1.36e6),
    "resnet18_cifar": ("resnet_cifar", RESNET_CHANNELS, 8, None),
    "resnet34_cifar": ("resnet_cifar", RESNET_CHANNELS, 16, None),
    "resnet18": ("resnet_imagenet", RESNET_CHANNELS, 8, 11.69e6),
    "resnet34": ("resnet_imagenet", RESNET_CHANNELS, 16, 21.80e6),
    "resnet50": ("resnet_imagenet", (256, 512, 1024, 2048), 16, 25.56e6),
}
IMAGENET = [n for n, spec in MODELS.items() if spec[0] == "resnet_imagenet"]


def trainable_parameters(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def check_stage_taps(model, name, size):
    family, channels, _, _ = MODELS[name]
    taps = resolve_taps(model, "stages")
    assert taps == [f"stage{i}" for i in range(1, len(channels) + 1)]
    shapes = [tuple(model.get_layer(t).output.shape[1:]) for t in taps]
    assert shapes == [(s, s, c) for s, c in zip(SPATIAL[family][size], channels)]


@pytest.mark.parametrize("name", list(MODELS))
def test_builds_at_32px_with_documented_taps_and_parameters(name):
    model = kerakd.models.get(name, num_classes=100, input_shape=(32, 32, 3))
    assert model.output.shape[1:] == (100,)
    check_stage_taps(model, name, 32)
    _, _, blocks, published = MODELS[name]
    if blocks:
        assert resolve_taps(model, "blocks") == [f"block{k}" for k in range(1, blocks + 1)]
    if published and name not in IMAGENET:
        assert trainable_parameters(model) == pytest.approx(published, rel=0.02)
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(bn.epsilon == 1e-5 and bn.momentum == 0.9 for bn in norms)


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_models_at_224px_taps_and_parameters(name):
    model = kerakd.models.get(name, num_classes=1000, input_shape=(224, 224, 3))
    check_stage_taps(model, name, 224)
    assert trainable_parameters(model) == pytest.approx(MODELS[name][3], rel=0.02)


@pytest.mark.parametrize("name", list(MODELS))
def test_grayscale_28px_runs_with_documented_taps(name):
    model = kerakd.models.get(name, num_classes=5, input_shape=(28, 28, 1))
    check_stage_taps(model, name, 28)
    *taps, logits = tap_model(model, resolve_taps(model, "stages"))(
        make_images(2, (28, 28, 1)), training=False
    )
    assert logits.shape == (2, 5) and np.isfinite(logits).all()
    lows = [float(np.min(t)) for t in taps]
    if name == "mobilenetv2":
        # Linear-bottleneck outputs: no ReLU, so negative values remain.
        assert all(low < 0 for low in lows)
    else:
        assert all(low >= 0 for low in lows)  # post-ReLU taps


def test_mobilenetv2_taps_every_inverted_residual_as_a_block():
    model = kerakd.models.get("mobilenetv2", num_classes=5, input_shape=(32, 32, 3))
    blocks = resolve_taps(model, "blocks")
    assert blocks == [f"block{k}" for k in range(1, 18)]
    widths = [model.get_layer(b).output.shape[-1] for b in blocks]
    assert widths == [8, 12, 12, 16, 16, 16, 32, 32, 32, 32, 48, 48, 48, 80, 80, 80, 160]
    # A stage tap is the last block of its resolution, the same tensor.
    last_blocks = ["block3", "block6", "block13", "block17"]
    stages = resolve_taps(model, "stages")
    *outputs, _ = tap_model(model, stages + last_blocks)(make_images(2, (32, 32, 3)),
                                                          training=False)
    for stage_out, block_out in zip(outputs[:4], outputs[4:]):
        np.testing.assert_array_equal(stage_out, block_out)


def test_vgg_pools_before_last_group_only_above_32px():
    small = kerakd.models.get("vgg8", 10, (32, 32, 3))
    large = kerakd.models.get("vgg8", 10, (64, 64, 3))
    assert small.get_layer("stage4").output.shape[1:3] == (4, 4)
    assert large.get_layer("stage3").output.shape[1:3] == (8, 8)
    assert large.get_layer("stage4").output.shape[1:3] == (4, 4)


def test_channel_shuffle_and_split_match_pytorch_semantics():
    n, h, w, c, groups = 2, 3, 3, 12, 3
    images = make_images(n, (h, w, c))
    inputs = keras.Input((h, w, c))
    shuffled = channel_shuffle(inputs, groups, "shuffle")
    first, second = split_channels(inputs, "split")
    outputs = keras.Model(inputs, [shuffled, first, second])(images)
    # PyTorch on NCHW: x.view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4).reshape(N, C, H, W)
    nchw = images.transpose(0, 3, 1, 2)
    expected = nchw.reshape(n, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4)
    expected = expected.reshape(n, c, h, w).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(outputs[0]), expected)
    np.testing.assert_array_equal(np.asarray(outputs[1]), images[..., : c // 2])
    np.testing.assert_array_equal(np.asarray(outputs[2]), images[..., c // 2 :])


def test_shufflenet_needs_fixed_image_size():
    with pytest.raises(ValueError, match="fixed image size"):
        kerakd.models.get("shufflenetv2", 10, (None, None, 3))


# Between them these use every layer type of the zoo modules above; the
# other names only change depths and widths.
SAVED = ["vgg8", "shufflenetv1", "shufflenetv2", "resnet18"]

LOAD_WITHOUT_KERAKD = """
import json, sys
import numpy as np
import keras
names = json.loads(sys.stdin.read())  # waits until the models are saved
images = np.load("images.npy")
outputs = {n: np.asarray(keras.models.load_model(n + ".keras")(images, training=False))
           for n in names}
np.savez("reloaded.npz", **outputs)
assert not [m for m in sys.modules if m.startswith("kerakd")], "kerakd was imported"
"""


@pytest.mark.slow
def test_saved_models_reload_without_kerakd(tmp_path):
    # Started first, so that its TensorFlow import overlaps the saving.
    loader = subprocess.Popen(
        [sys.executable, "-c", LOAD_WITHOUT_KERAKD], cwd=tmp_path, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    images = make_images(2, (32, 32, 3))
    np.save(tmp_path / "images.npy", images)
    rng = np.random.default_rng(0)
    expected = {}
    for name in SAVED:
        model = kerakd.models.get(name, num_classes=5, input_shape=(32, 32, 3))
        for layer in model.layers:  # BN statistics must survive the round trip too
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
                layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape))
        expected[name] = np.asarray(model(images, training=False))
        kerakd.models.core_keras(model).save(tmp_path / f"{name}.keras")
    _, stderr = loader.communicate(json.dumps(SAVED), timeout=300)
    assert loader.returncode == 0, stderr[-3000:]
    reloaded = np.load(tmp_path / "reloaded.npz")
    for name in SAVED:
        np.testing.assert_allclose(reloaded[name], expected[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("teacher_name, student_name", [
    ("vgg13", "shufflenetv2"),
    ("resnet34", "resnet18"),
])
def test_one_kd_training_step(teacher_name, student_name):
    shape = (32, 32, 3)
    teacher = kerakd.models.get(teacher_name, num_classes=5, input_shape=shape)
    student = kerakd.models.get(student_name, num_classes=5, input_shape=shape)
    watched = [student.get_layer(n).kernel for n in ("stem_conv", "logits")]
    before = [np.array(v.numpy()) for v in watched]
    distiller = kerakd.Distiller(student, "kd", teacher)
    # Eager steps: compiling the two graphs costs about a minute on a shared
    # CPU. Building the Distiller already traces both networks in a graph.
    distiller.compile(keras.optimizers.SGD(0.01, momentum=0.9), run_eagerly=True)
    history = distiller.fit(make_dataset(4, 2, shape), epochs=1, verbose=0)
    assert {"loss", "kd", "ce"} <= set(history.history)
    for name, values in history.history.items():
        assert np.isfinite(values).all(), name
    for old, variable in zip(before, watched):
        assert not np.array_equal(old, variable.numpy()), variable.path
