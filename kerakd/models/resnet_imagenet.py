"""ResNet-18/34/50 as in torchvision, and ResNet-18/34 with a CIFAR stem.

- `resnet18`, `resnet34`, `resnet50`: torchvision's ImageNet ResNets: a 7x7
  stride-2 stem conv -> BN -> ReLU -> 3x3 stride-2 max-pool, four stages of
  widths 64/128/256/512 (basic blocks; bottlenecks with 4x expansion for
  resnet50, striding on the 3x3 conv, "ResNet v1.5"), global pooling and a
  linear classifier. Shortcuts are 1x1 conv + BN where the shape changes.
- `resnet18_cifar`, `resnet34_cifar`: the same stages behind a 3x3 stride-1
  stem and no max-pool, the CIFAR ResNet-18 of the self-distillation papers
  (FRSKD, BYOT), so a 32 px image reaches stage 4 at 4x4.

The max-pool pads one zero pixel on every side: PyTorch pads with -inf, but
the input is post-ReLU (>= 0), so zeros give the same maxima.

Taps (all post-ReLU): `stage1..4` (stage outputs), `block1..N` (every block's
output, e.g. 8 for resnet18, 16 for resnet34/50), `pool`.

Example:

>>> model = kerakd.models.get("resnet18", num_classes=1000, input_shape=(224, 224, 3))
>>> kerakd.taps.resolve_taps(model, "stages")
['stage1', 'stage2', 'stage3', 'stage4']
>>> [tuple(model.get_layer(name).output.shape[1:])
...  for name in kerakd.taps.resolve_taps(model, "stages")]
[(56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512)]
>>> model.count_params()
11699112
"""

import keras

from kerakd import models
from kerakd.models import layers as L
from kerakd.models.resnet_cifar import basic_block, projection_shortcut, residual_output

WIDTHS = (64, 128, 256, 512)
EXPANSION = 4  # bottleneck output width / inner width


def bottleneck_block(x, filters, strides, name, output_name=None, init="kaiming_fan_out"):
    """1x1-BN-ReLU, 3x3 (strided)-BN-ReLU, 1x1 (4x filters)-BN, + shortcut, ReLU;
    convolutions initialized by `init` (`kerakd.models.layers.CONV_INITS`)."""
    out_channels = filters * EXPANSION
    shortcut = projection_shortcut(x, out_channels, strides, name, init)
    y = L.conv(x, filters, 1, name=f"{name}_conv1", init=init)
    y = L.relu(L.batch_norm(f"{name}_bn1")(y), name=f"{name}_relu1")
    y = L.conv(y, filters, 3, strides, name=f"{name}_conv2", init=init)
    y = L.relu(L.batch_norm(f"{name}_bn2")(y), name=f"{name}_relu2")
    y = L.conv(y, out_channels, 1, name=f"{name}_conv3", init=init)
    y = L.batch_norm(f"{name}_bn3")(y)
    return residual_output(y, shortcut, name, output_name)


BLOCKS = {"basic": basic_block, "bottleneck": bottleneck_block}

# The conv initialization of each stem's reference: torchvision's loop
# (kaiming fan-out) for the ImageNet ResNets; none in FRSKD's CIFAR ResNet-18,
# so PyTorch's defaults.
STEM_INITS = {"imagenet": "kaiming_fan_out", "cifar": "torch_default"}

# name: (block kind, blocks per stage, stem)
CONFIGS = {
    "resnet18": ("basic", (2, 2, 2, 2), "imagenet"),
    "resnet34": ("basic", (3, 4, 6, 3), "imagenet"),
    "resnet50": ("bottleneck", (3, 4, 6, 3), "imagenet"),
    "resnet18_cifar": ("basic", (2, 2, 2, 2), "cifar"),
    "resnet34_cifar": ("basic", (3, 4, 6, 3), "cifar"),
}


def _stem(inputs, kind):
    if kind == "imagenet":
        x = L.conv(inputs, 64, 7, 2, name="stem_conv", init=STEM_INITS[kind])
    else:
        x = L.conv(inputs, 64, 3, name="stem_conv", init=STEM_INITS[kind])
    x = L.relu(L.batch_norm("stem_bn")(x), name="stem_relu")
    if kind == "imagenet":
        x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        x = keras.layers.MaxPooling2D(3, 2, name="stem_pool")(x)
    return x


def resnet(block, blocks_per_stage, stem, num_classes, input_shape, name):
    """A four-stage ResNet.

    Args:
        block: `"basic"` or `"bottleneck"`.
        blocks_per_stage: four block counts.
        stem: `"imagenet"` (7x7/2 conv + max-pool) or `"cifar"` (3x3/1 conv).
        num_classes: number of logits.
        input_shape: `(H, W, C)` of the images.
        name: model name.

    Returns:
        A functional `keras.Model` `images -> logits`, taps `stage1..4`,
        `block1..N`.
    """
    block_fn = BLOCKS[block]
    inputs = keras.Input(input_shape, name="images")
    x = _stem(inputs, stem)
    k = 0
    for stage, (filters, n) in enumerate(zip(WIDTHS, blocks_per_stage), start=1):
        for i in range(n):
            k += 1
            strides = 2 if stage > 1 and i == 0 else 1
            x = block_fn(x, filters, strides, f"s{stage}b{i + 1}", output_name=f"block{k}",
                         init=STEM_INITS[stem])
        x = keras.layers.Identity(name=f"stage{stage}")(x)
    return keras.Model(inputs, L.classifier(x, num_classes), name=name)


def _factory(name):
    block, blocks_per_stage, stem = CONFIGS[name]

    def build(num_classes=100, input_shape=(32, 32, 3)):
        return resnet(block, blocks_per_stage, stem, num_classes, input_shape, name)

    build.__name__ = name
    build.__doc__ = f"{name}: {block} blocks {blocks_per_stage}, {stem} stem."
    return build


models.register_all({name: _factory(name) for name in CONFIGS})
