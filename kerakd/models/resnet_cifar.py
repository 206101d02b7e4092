"""CIFAR ResNets of the CRD benchmark (RepDistiller's `resnet.py`).

`resnet{8,14,20,32,44,56,110}` (widths 16/16/32/64) and `resnet8x4`,
`resnet32x4` (widths 32/64/128/256): a 3x3 stem, three stages of basic blocks
(the last two halve the resolution), global pooling and a linear classifier.
Any input size works (pooling is global, not the reference's fixed 8x8).

Taps (all post-ReLU, the reference's `preact=False` features):
`stage1..3` (stage outputs), `block1..N` (each block's output; every second
block for resnet110, the AFD convention), `pool`.
"""

import keras

from kerakd import models
from kerakd.models import layers as L

# name: (depth, stem width, stage widths)
CONFIGS = {
    "resnet8": (8, 16, (16, 32, 64)),
    "resnet14": (14, 16, (16, 32, 64)),
    "resnet20": (20, 16, (16, 32, 64)),
    "resnet32": (32, 16, (16, 32, 64)),
    "resnet44": (44, 16, (16, 32, 64)),
    "resnet56": (56, 16, (16, 32, 64)),
    "resnet110": (110, 16, (16, 32, 64)),
    "resnet8x4": (8, 32, (64, 128, 256)),
    "resnet32x4": (32, 32, (64, 128, 256)),
}


def projection_shortcut(x, filters, strides, name, init="kaiming_fan_out"):
    """A residual block's shortcut: `x` itself, or, where the block changes
    the shape, a strided conv1x1 (`<name>_down_conv`) and BN (`<name>_down_bn`)
    to `filters` channels. Called before the block's main path, so the
    initializers are made in the reference's order."""
    if strides == 1 and x.shape[-1] == filters:
        return x
    shortcut = L.conv(x, filters, 1, strides, name=f"{name}_down_conv", init=init)
    return L.batch_norm(f"{name}_down_bn")(shortcut)


def residual_output(y, shortcut, name, output_name=None):
    """`relu(y + shortcut)`: the `<name>_add` layer, then a ReLU named
    `output_name` (default `<name>_out`)."""
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return L.relu(y, name=output_name or f"{name}_out")


def basic_block(x, filters, strides, name, output_name=None, init="kaiming_fan_out"):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut -> ReLU (named `output_name`);
    convolutions initialized by `init` (`kerakd.models.layers.CONV_INITS`)."""
    shortcut = projection_shortcut(x, filters, strides, name, init)
    y = L.conv(x, filters, 3, strides, name=f"{name}_conv1", init=init)
    y = L.relu(L.batch_norm(f"{name}_bn1")(y), name=f"{name}_relu1")
    y = L.conv(y, filters, 3, name=f"{name}_conv2", init=init)
    y = L.batch_norm(f"{name}_bn2")(y)
    return residual_output(y, shortcut, name, output_name)


def cifar_resnet(depth, stem_width, widths, num_classes, input_shape, name, block_tap_every=1):
    if (depth - 2) % 6:
        raise ValueError(f"A CIFAR ResNet's depth must be 6n+2, got {depth}.")
    blocks_per_stage = (depth - 2) // 6
    inputs = keras.Input(input_shape, name="images")
    x = L.conv(inputs, stem_width, 3, name="stem_conv")
    x = L.relu(L.batch_norm("stem_bn")(x), name="stem_relu")
    block = 0
    for stage, filters in enumerate(widths, start=1):
        for i in range(blocks_per_stage):
            block += 1
            strides = 2 if stage > 1 and i == 0 else 1
            tap = f"block{block // block_tap_every}" if block % block_tap_every == 0 else None
            x = basic_block(x, filters, strides, f"s{stage}b{i + 1}", output_name=tap)
        x = keras.layers.Identity(name=f"stage{stage}")(x)
    return keras.Model(inputs, L.classifier(x, num_classes), name=name)


def _factory(name):
    depth, stem, widths = CONFIGS[name]

    def build(num_classes=100, input_shape=(32, 32, 3)):
        return cifar_resnet(
            depth, stem, widths, num_classes, input_shape, name,
            block_tap_every=2 if depth >= 110 else 1,
        )

    build.__name__ = name
    build.__doc__ = f"CIFAR {name} (depth {depth}, widths {stem}/{widths})."
    return build


models.register_all({name: _factory(name) for name in CONFIGS})
