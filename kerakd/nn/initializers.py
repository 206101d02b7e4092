"""The initializers of the PyTorch reference code, as core Keras initializers.

kerakd's results are compared with the authors' PyTorch code, so every model
and method module starts where that code starts (`docs/methods/conventions.md`,
"Initialization"). Each function returns a *new* core Keras initializer, so a
saved model loads without kerakd, and two layers never share one: an
initializer made once and shared holds one integer seed, drawn before any
`keras.utils.set_random_seed`, and would give equal-shaped kernels equal values.

Fans are counted as PyTorch counts them. Keras agrees for `Dense` kernels
`(in, out)` and `Conv2D` kernels `(kh, kw, in / groups, out)`; for a
`DepthwiseConv2D` kernel `(kh, kw, C, 1)` Keras swaps them (its fan-in is
`kh * kw * C`, PyTorch's is `kh * kw` for the `(C, 1, kh, kw)` weight), so the
depthwise variants pick the other Keras mode. Depth multipliers other than 1
are not used in kerakd.

Kinds: `"dense"`, `"conv"` (also grouped) and `"depthwise"`.

Example:

>>> import keras
>>> from kerakd.nn import initializers
>>> layer = keras.layers.Dense(
...     10, kernel_initializer=initializers.torch_default("dense"),
...     bias_initializer=initializers.torch_default_bias(fan_in=64))
>>> layer.build((None, 64))
>>> bool(abs(layer.bias.numpy()).max() <= 64 ** -0.5)
True
"""

import math

import keras

KINDS = ("dense", "conv", "depthwise")


def _check(kind):
    if kind not in KINDS:
        raise ValueError(f"Unknown layer kind '{kind}'; expected one of {KINDS}.")


def torch_default(kind):
    """PyTorch's default `Linear`/`Conv2d` weight: `kaiming_uniform_(a=sqrt(5))`.

    That is U(-b, b) with b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + 5)),
    i.e. b = 1 / sqrt(fan_in).

    Args:
        kind: the layer the kernel belongs to, one of `KINDS`.
    """
    _check(kind)
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0,
        mode="fan_out" if kind == "depthwise" else "fan_in",
        distribution="uniform",
    )


def torch_default_bias(fan_in):
    """PyTorch's default bias: U(-1 / sqrt(fan_in), 1 / sqrt(fan_in)), where
    `fan_in` is the fan-in of the layer's weight (`in_features`, or
    `in_channels / groups * kh * kw`)."""
    if fan_in < 1:
        raise ValueError(f"fan_in must be positive, got {fan_in}.")
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def kaiming_normal_fan_out(kind="conv"):
    """`kaiming_normal_(mode="fan_out", nonlinearity="relu")`: N(0, sqrt(2 / fan_out)).

    The conv init of the RepDistiller/mdistiller CIFAR zoo and torchvision's
    ResNets (also written there as `normal_(0, sqrt(2 / (kh * kw * out)))`).
    A depthwise weight's PyTorch fan-out is `kh * kw * C`.
    """
    _check(kind)
    return keras.initializers.VarianceScaling(
        scale=2.0,
        mode="fan_in" if kind == "depthwise" else "fan_out",
        distribution="untruncated_normal",
    )


def xavier_normal():
    """`xavier_normal_`: N(0, sqrt(2 / (fan_in + fan_out))), not truncated
    (Keras's `glorot_normal` is a truncated normal)."""
    return keras.initializers.VarianceScaling(
        scale=1.0, mode="fan_avg", distribution="untruncated_normal"
    )


def normal(stddev):
    """`normal_(0, stddev)` (e.g. the VGG and MobileNetV2 classifiers' 0.01)."""
    return keras.initializers.RandomNormal(0.0, stddev)


def zeros():
    """`zero_()`: biases the reference code zeroes explicitly."""
    return keras.initializers.Zeros()
