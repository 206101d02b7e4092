"""VGG with BatchNorm for CIFAR-size images (RepDistiller's `vgg.py`, `*_bn`).

Five groups of 3x3 conv-BN-ReLU (group 0 is the stem), 2x2 max-pools
between groups, global average pooling and ONE linear layer (no VGG FC
stack). The max-pool before the last group is skipped at 32 px and below,
so CIFAR images reach the last two groups at 4x4. Convolutions keep their
bias, as in the reference (`nn.Conv2d` default) and its parameter counts.

Deviation: the reference pools before the last group only for 64 px inputs
(`h == 64`); here it pools for every input larger than 32 px, so larger
images are downsampled alike. An unknown height counts as small.

Taps: `stage1..4`, the post-ReLU outputs of groups 1..4 (the reference's
`f1..f4` with `preact=False`, SemCKD's convention; the stem is excluded),
and `pool`.

Example:

>>> model = kerakd.models.get("vgg8", num_classes=100)   # 32x32x3 images
>>> kerakd.taps.resolve_taps(model, "stages")
['stage1', 'stage2', 'stage3', 'stage4']
>>> [tuple(model.get_layer(name).output.shape[1:])
...  for name in kerakd.taps.resolve_taps(model, "stages")]
[(16, 16, 128), (8, 8, 256), (4, 4, 512), (4, 4, 512)]
"""

import keras

from kerakd import models
from kerakd.models import layers as L

# Output widths of the convolutions of groups 0..4.
CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": (
        (64, 64), (128, 128), (256, 256, 256, 256),
        (512, 512, 512, 512), (512, 512, 512, 512),
    ),
}


def conv_group(x, widths, name, output_name=None):
    """3x3 conv (with bias) -> BN -> ReLU per width; the last ReLU is `output_name`."""
    for j, filters in enumerate(widths, start=1):
        # Stride 1 throughout, so Keras "same" equals PyTorch's padding=1.
        x = keras.layers.Conv2D(
            filters, 3, padding="same", kernel_initializer=L.CONV_INITS["kaiming_fan_out"]("conv"),
            name=f"{name}_conv{j}",
        )(x)
        x = L.batch_norm(f"{name}_bn{j}")(x)
        last = j == len(widths)
        x = L.relu(x, name=output_name if last and output_name else f"{name}_relu{j}")
    return x


def vgg(groups, num_classes, input_shape, name):
    """A BatchNorm VGG from per-group conv widths.

    Args:
        groups: five tuples of conv widths (stem, then the four tapped groups).
        num_classes: number of logits.
        input_shape: `(H, W, C)` of the images.
        name: model name.

    Returns:
        A functional `keras.Model` `images -> logits` with taps `stage1..4`.
    """
    height = input_shape[0]
    pool_before_last = height is not None and height > 32
    inputs = keras.Input(input_shape, name="images")
    x = conv_group(inputs, groups[0], "g0")
    for i, widths in enumerate(groups[1:], start=1):
        if i < 4 or pool_before_last:
            x = keras.layers.MaxPooling2D(2, name=f"maxpool{i}")(x)
        x = conv_group(x, widths, f"g{i}", output_name=f"stage{i}")
    return keras.Model(inputs, L.classifier(x, num_classes, init="normal"), name=name)


def _factory(name):
    groups = CONFIGS[name]

    def build(num_classes=100, input_shape=(32, 32, 3)):
        return vgg(groups, num_classes, input_shape, name)

    build.__name__ = name
    build.__doc__ = f"{name} with BatchNorm, CIFAR variant (RepDistiller `{name}_bn`)."
    return build


models.register_all({name: _factory(name) for name in CONFIGS})
