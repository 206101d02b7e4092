"""Core Keras layers initialized as PyTorch's `nn.Linear` / `nn.Conv2d` are.

The method modules of the reference code keep PyTorch's default
initialization (`docs/methods/conventions.md`, "Initialization"); these
builders give the same start with core Keras layers. A layer's PyTorch bias
bound depends on its fan-in, so the builders take the input width.

Example:

>>> from kerakd.nn import layers
>>> linear = layers.linear(10, in_features=64, name="embed")   # nn.Linear(64, 10)
>>> linear.build((None, 64))
>>> tuple(linear.kernel.shape)
(64, 10)
"""

import keras

from kerakd.nn import initializers


def linear(units, in_features, use_bias=True, **kwargs):
    """`nn.Linear(in_features, units, bias=use_bias)` as a `keras.layers.Dense`.

    Args:
        units: the output width.
        in_features: the input width (sets the bias bound).
        use_bias: whether the layer has a bias.
        **kwargs: other `keras.layers.Dense` arguments (`activation`, `name`,
            `dtype`).
    """
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=initializers.torch_default("dense"),
        bias_initializer=initializers.torch_default_bias(in_features),
        **kwargs,
    )


def conv2d(filters, kernel_size, use_bias=False, in_channels=None, groups=1, **kwargs):
    """`nn.Conv2d(in_channels, filters, kernel_size, bias=use_bias, groups=groups)`
    as a `keras.layers.Conv2D` (bias-free by default, as the reference method
    modules' convolutions are).

    Args:
        filters: the output channels.
        kernel_size: an integer.
        use_bias: whether the layer has a bias.
        in_channels: the input channels; needed with a bias (they set its
            bound).
        groups: grouped convolution.
        **kwargs: other `keras.layers.Conv2D` arguments (`strides`,
            `padding`, `name`, ...).
    """
    if use_bias and in_channels is None:
        raise ValueError("conv2d with a bias needs `in_channels` (they set the bias bound).")
    bias = (initializers.torch_default_bias(in_channels // groups * kernel_size ** 2)
            if use_bias else "zeros")
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        use_bias=use_bias,
        groups=groups,
        kernel_initializer=initializers.torch_default("conv"),
        bias_initializer=bias,
        **kwargs,
    )


def depthwise_conv2d(kernel_size, **kwargs):
    """A bias-free `nn.Conv2d(C, C, kernel_size, groups=C)` as a
    `keras.layers.DepthwiseConv2D`.

    Args:
        kernel_size: an integer.
        **kwargs: other `keras.layers.DepthwiseConv2D` arguments.
    """
    return keras.layers.DepthwiseConv2D(
        kernel_size,
        use_bias=False,
        depthwise_initializer=initializers.torch_default("depthwise"),
        **kwargs,
    )
