"""Branches: small training-only networks that grow from a student's tap.

A branch takes an intermediate feature map down to where the backbone ends
(the last stage's spatial size and channel count) and pools it to a vector.
LFMA heads (`docs/methods/lfma.md`) and AID branches (`docs/methods/aid.md`)
both use it; methods pick a builder by name (`builders`), so that a
hyperparameter can choose it and a user can register another ("elastic"
heads, in the LFMA paper's words).

A builder is a function `(x, target_shape, name) -> pooled features` that
applies layers (named with the prefix `name`) to the tensor `x` and returns
a `(B, D)` tensor, where `target_shape` is the shape of the deepest tap.

Example:

>>> from kerakd.blocks import branches
>>> branches.builders.available()
['separable']
>>> tap = keras.Input((16, 16, 16))   # a stage1 tap; the deepest tap is 4x4x64
>>> build = branches.builders.factory("separable")
>>> features = build(tap, target_shape=(None, 4, 4, 64), name="head1")
>>> features.shape
(None, 64)
>>> head = keras.Model(tap, keras.layers.Dense(10)(features))
>>> head.output_shape
(None, 10)
"""

import keras

from kerakd.models import layers as L
from kerakd.registry import Registry

builders = Registry("branch builder")


def halvings(size, target):
    """How many stride-2, padding-1 3x3 convolutions take `size` to `target`.

    Each one maps `n` to `ceil(n / 2)`. Returns None when `target` is not
    reached exactly (it is larger than `size`, or skipped over).
    """
    count = 0
    while size > target:
        size = (size + 1) // 2
        count += 1
    return count if size == target else None


def branch_plan(input_shape, target_shape):
    """`[(filters, strides), ...]`, one entry per block of a separable branch.

    One stride-2 block per halving of the spatial size; the channel counts go
    geometrically from the tap's to the target's (doubling per halving for
    the usual ResNet widths), the last block giving the target's exactly.
    A tap already at the target size gets one stride-1 block (choice: a head
    without any extra layer would only repeat the backbone's classifier).

    Args:
        input_shape: `(B, H, W, C)` of the tap.
        target_shape: `(B, h, w, c)` of the deepest tap.

    Raises:
        ValueError: the tap's size cannot be halved down to the target's.
    """
    (height, width, channels), (t_height, t_width, t_channels) = (
        tuple(input_shape[1:]), tuple(target_shape[1:])
    )
    steps = {halvings(height, t_height), halvings(width, t_width)}
    if len(steps) != 1 or None in steps:
        raise ValueError(
            f"A branch cannot take a tap of spatial size {(height, width)} to "
            f"the last stage's size {(t_height, t_width)} by stride-2 steps. "
            "Grow branches only from taps whose size halves down to the "
            "deepest tap's (list the taps shallow to deep, deepest last)."
        )
    count = steps.pop()
    if count == 0:
        return [(t_channels, 1)]
    return [
        (round(channels * (t_channels / channels) ** (k / count)), 2)
        for k in range(1, count + 1)
    ]


def separable_block(x, filters, strides, name):
    """depthwise3x3(stride) -> conv1x1 -> BN -> ReLU -> depthwise3x3 -> conv1x1 -> BN -> ReLU.

    The first 1x1 convolution changes the channel count (choice; the paper
    leaves open which one does). PyTorch's default initialization (choice:
    the methods these heads serve publish no code; every reference method
    module keeps PyTorch's defaults).
    """
    x = L.depthwise_conv(x, 3, strides, name=f"{name}_dw1", init="torch_default")
    x = L.conv(x, filters, 1, name=f"{name}_pw1", init="torch_default")
    x = L.relu(L.batch_norm(f"{name}_bn1")(x), name=f"{name}_relu1")
    x = L.depthwise_conv(x, 3, name=f"{name}_dw2", init="torch_default")
    x = L.conv(x, filters, 1, name=f"{name}_pw2", init="torch_default")
    return L.relu(L.batch_norm(f"{name}_bn2")(x), name=f"{name}_relu2")


@builders.register("separable")
def separable_branch(x, target_shape, name):
    """Depthwise-separable blocks down to `target_shape`, then global pooling.

    The "extra layers" of `docs/methods/lfma.md` and the branch `T_j` of
    `docs/methods/aid.md`: blocks of `separable_block`, one per halving (see
    `branch_plan`), with PyTorch's symmetric padding and BatchNorm numerics
    (`kerakd.models.layers`).

    Args:
        x: the tap, a `(B, H, W, C)` tensor (symbolic: a `keras.Input`).
        target_shape: `(B, h, w, c)`, the shape of the deepest tap.
        name: prefix of the layer names (`<name>_block1_dw1`, ...,
            `<name>_pool`).

    Returns:
        The pooled features, `(B, c)`.
    """
    for k, (filters, strides) in enumerate(branch_plan(x.shape, target_shape), start=1):
        x = separable_block(x, filters, strides, f"{name}_block{k}")
    return keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)


def branch_features(builder, input_shape, target_shape, name):
    """A branch on a new input: `(inputs, pooled features)`, ready for heads.

    Args:
        builder: a registered builder name (`builders.available()`).
        input_shape: `(B, H, W, C)` of the tap the branch grows from.
        target_shape: `(B, h, w, c)` of the deepest tap.
        name: prefix of the branch's layer names.

    Returns:
        `(keras.Input, (B, D) tensor)`, to close into a functional model with
        the method's own output layers.
    """
    inputs = keras.Input(shape=tuple(input_shape[1:]), name=f"{name}_input")
    return inputs, builders.factory(builder)(inputs, target_shape, name)


def check_builder(name):
    """Returns `name`; a ValueError lists the registered builders if it is unknown."""
    builders.factory(name)
    return name
