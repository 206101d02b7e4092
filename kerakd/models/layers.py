"""Building blocks of the zoo, with PyTorch-parity numerics
(`docs/methods/conventions.md`).

- BatchNorm: `kerakd.nn.BatchNormalization` (epsilon 1e-5, momentum 0.9, and
  PyTorch's moving-variance update).
- Convolutions without bias, initialized as the model's reference zoo does
  (`init`): He-normal over fan-out (`kaiming_normal_(mode="fan_out")`, the
  RepDistiller/mdistiller zoo and torchvision) or PyTorch's default (models
  whose reference code sets no initializer: ShuffleNets, the CIFAR-stem
  ResNets).
- Classifiers initialized as the reference's (`classifier(init=...)`).
- Strided 3x3 convolutions pad one pixel on every side, like PyTorch's
  `padding=1`, rather than Keras's bottom/right-only "same" padding.

Names: zoo models tag their tap layers `stage{i}`, `block{k}`, `pool`, and
name the classifier `logits` (see `kerakd.taps`).
"""

import keras

from kerakd.nn import BatchNormalization
from kerakd.nn import initializers

# The two conv initializations of the reference zoos (a new one per layer).
CONV_INITS = {
    "kaiming_fan_out": initializers.kaiming_normal_fan_out,
    "torch_default": initializers.torch_default,
}
# The reference classifiers' (kernel, bias) initializers, given the fan-in.
CLASSIFIER_INITS = {
    # nn.Linear left as built (RepDistiller resnet, ShuffleNets, torchvision).
    "torch_default": lambda fan_in: (initializers.torch_default("dense"),
                                     initializers.torch_default_bias(fan_in)),
    # RepDistiller wrn: the default weight, the bias zeroed.
    "zero_bias": lambda fan_in: (initializers.torch_default("dense"), initializers.zeros()),
    # RepDistiller vgg and mobilenetv2: normal_(0, 0.01), bias zeroed.
    "normal": lambda fan_in: (initializers.normal(0.01), initializers.zeros()),
}


def _check(init, inits):
    if init not in inits:
        raise ValueError(f"Unknown init '{init}'; expected one of {sorted(inits)}.")


def batch_norm(name=None):
    return BatchNormalization(name=name)


def _pytorch_padding(x, kernel_size, strides, name):
    """Pads `x` as PyTorch's `padding=k//2` would; returns (x, Keras padding).

    Stride 1 "same" already pads symmetrically; a strided conv pads by hand.
    """
    pad = kernel_size // 2
    if strides > 1 and pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad" if name else None)(x)
        return x, "valid"
    return x, "same"


def _padded_conv(layer, kind, x, kernel_size, strides, name, init, **kwargs):
    """Applies a bias-free `layer` (a Keras convolution class) to `x` with
    PyTorch's symmetric `padding=k//2`, its kernel initialized by `init` (a
    key of `CONV_INITS`) for a layer of `kind` (`"conv"` or `"depthwise"`)."""
    _check(init, CONV_INITS)
    x, padding = _pytorch_padding(x, kernel_size, strides, name)
    initializer = {"conv": "kernel_initializer", "depthwise": "depthwise_initializer"}[kind]
    return layer(
        kernel_size=kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        name=name,
        **{initializer: CONV_INITS[init](kind)},
        **kwargs,
    )(x)


def conv(x, filters, kernel_size, strides=1, name=None, groups=1, init="kaiming_fan_out"):
    """A bias-free convolution with PyTorch's symmetric `padding=k//2`,
    initialized by `init` (a key of `CONV_INITS`)."""
    return _padded_conv(keras.layers.Conv2D, "conv", x, kernel_size, strides, name, init,
                        filters=filters, groups=groups)


def depthwise_conv(x, kernel_size=3, strides=1, name=None, init="kaiming_fan_out"):
    """A bias-free depthwise convolution with PyTorch's symmetric padding,
    initialized by `init` (a key of `CONV_INITS`)."""
    return _padded_conv(keras.layers.DepthwiseConv2D, "depthwise", x, kernel_size, strides,
                        name, init)


def relu(x, name=None):
    return keras.layers.ReLU(name=name)(x)


def classifier(x, num_classes, init="torch_default"):
    """Global average pool (`pool`, the penultimate tap) -> Dense `logits`,
    initialized by `init` (a key of `CLASSIFIER_INITS`).

    The logits are float32 under a mixed-precision policy (Keras's advice for
    the last layer), so exported students predict in full precision.
    """
    _check(init, CLASSIFIER_INITS)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    kernel, bias = CLASSIFIER_INITS[init](x.shape[-1])
    return keras.layers.Dense(num_classes, kernel_initializer=kernel, bias_initializer=bias,
                              name="logits", dtype="float32")(x)
