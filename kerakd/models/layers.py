"""Building blocks of the zoo, with PyTorch-parity numerics (conventions.md).

- BatchNorm with epsilon 1e-5, momentum 0.9 (PyTorch's 1e-5 / 0.1).
- Convolutions without bias, He-normal over fan-out (PyTorch's
  `kaiming_normal_(mode="fan_out")` used by the reference zoos).
- Strided 3x3 convolutions pad one pixel on every side, like PyTorch's
  `padding=1`, rather than Keras's bottom/right-only "same" padding.

Names: zoo models tag their tap layers `stage{i}`, `block{k}`, `pool`, and
name the classifier `logits` (see `kerakd.taps`).
"""

import keras

def conv_init():
    """He-normal over fan-out, a new one per layer: an initializer made once
    and shared would hold one integer seed, drawn at import (before any
    `keras.utils.set_random_seed`), and give equal-shaped kernels equal values."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def batch_norm(name=None):
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def _pytorch_padding(x, kernel_size, strides, name):
    """Pads `x` as PyTorch's `padding=k//2` would; returns (x, Keras padding).

    Stride 1 "same" already pads symmetrically; a strided conv pads by hand.
    """
    pad = kernel_size // 2
    if strides > 1 and pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad" if name else None)(x)
        return x, "valid"
    return x, "same"


def conv(x, filters, kernel_size, strides=1, name=None, groups=1):
    """A bias-free convolution with PyTorch's symmetric `padding=k//2`."""
    x, padding = _pytorch_padding(x, kernel_size, strides, name)
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        groups=groups,
        kernel_initializer=conv_init(),
        name=name,
    )(x)


def depthwise_conv(x, kernel_size=3, strides=1, name=None):
    """A bias-free depthwise convolution with PyTorch's symmetric padding."""
    x, padding = _pytorch_padding(x, kernel_size, strides, name)
    return keras.layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        depthwise_initializer=conv_init(),
        name=name,
    )(x)


def relu(x, name=None):
    return keras.layers.ReLU(name=name)(x)


def classifier(x, num_classes):
    """Global average pool (`pool`, the penultimate tap) -> Dense `logits`.

    The logits are float32 under a mixed-precision policy (Keras's advice for
    the last layer), so exported students predict in full precision.
    """
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.layers.Dense(num_classes, name="logits", dtype="float32")(x)
