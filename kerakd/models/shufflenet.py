"""ShuffleNet V1 and V2, CIFAR variants (RepDistiller's `ShuffleNetv1.py`,
`ShuffleNetv2.py`).

Both start with a 1x1 conv (24 channels) at full resolution, then three
stages that each halve the resolution; pooling is global and the classifier
linear.

- `shufflenetv1`: groups 3, stage widths 240/480/960, 4/8/4 units. A unit is
  1x1 group conv -> BN -> ReLU -> channel shuffle -> 3x3 depthwise -> BN ->
  ReLU -> 1x1 group conv -> BN, added to its input (stride 1) or
  concatenated with a 3x3 average pool of it (stride 2), then ReLU. As in the
  reference, the first unit's first conv is not grouped (24 input
  channels), and a ReLU follows the depthwise conv.
- `shufflenetv2`: width 1, stage widths 116/232/464, 3/7/3 basic units after
  each down-sampling unit, then a 1x1 conv to 1024 channels -> BN -> ReLU.

Channel split and shuffle use core layers only (Reshape, Permute,
Cropping3D), so saved models load without kerakd; they reshape with the
static spatial size, so the image size must be fixed.

Taps: `stage1..3`, the post-ReLU stage outputs (the reference's `f1..f3`
with `preact=False`, SemCKD's convention; V2's is the shuffled output of the
stage's last unit), and `pool`. At 32 px: 16x16, 8x8, 4x4.

Example:

>>> model = kerakd.models.get("shufflenetv2", num_classes=100)   # 32x32x3 images
>>> [tuple(model.get_layer(name).output.shape[1:])
...  for name in kerakd.taps.resolve_taps(model, "stages")]
[(16, 16, 116), (8, 8, 232), (4, 4, 464)]
>>> model.count_params()
1371708
"""

import functools

import keras

from kerakd import models
from kerakd.models import layers as L


def channel_shuffle(x, groups, name):
    """Interleaves `groups` channel groups (PyTorch's view-permute-reshape);
    the last layer is named `name`."""
    h, w, c = x.shape[1:]
    x = keras.layers.Reshape((h, w, groups, c // groups), name=f"{name}_groups")(x)
    x = keras.layers.Permute((1, 2, 4, 3), name=f"{name}_transpose")(x)
    return keras.layers.Reshape((h, w, c), name=name)(x)


def split_channels(x, name):
    """The first and second halves of the channels of `x`."""
    h, w, c = x.shape[1:]
    halves = keras.layers.Reshape((h, w, 2, c // 2), name=f"{name}_halves")(x)
    parts = []
    for i, crop in enumerate(((0, 1), (1, 0)), start=1):
        part = keras.layers.Cropping3D(((0, 0), (0, 0), crop), name=f"{name}_crop{i}")(halves)
        parts.append(keras.layers.Reshape((h, w, c // 2), name=f"{name}_half{i}")(part))
    return parts


# The reference ShuffleNets set no initializer: PyTorch's defaults throughout.
_conv = functools.partial(L.conv, init="torch_default")
_depthwise_conv = functools.partial(L.depthwise_conv, init="torch_default")


def _bn(x, name, relu=False):
    x = L.batch_norm(f"{name}_bn")(x)
    return L.relu(x, name=f"{name}_relu") if relu else x


def _stem(input_shape):
    if None in tuple(input_shape)[:2]:
        raise ValueError(
            "ShuffleNets need a fixed image size (the channel shuffle reshapes "
            f"with it); got input_shape={tuple(input_shape)}."
        )
    inputs = keras.Input(input_shape, name="images")
    return inputs, _bn(_conv(inputs, 24, 1, name="stem_conv"), "stem", relu=True)


# -- ShuffleNet V1 ----------------------------------------------------------


def shuffle_unit_v1(x, out_channels, strides, groups, name, output_name=None):
    """A ShuffleNet V1 unit; its output ReLU is named `output_name` if given."""
    in_channels = x.shape[-1]
    # A stride-2 unit concatenates its pooled input, so its branch is narrower.
    branch = out_channels - in_channels if strides == 2 else out_channels
    first_groups = 1 if in_channels == 24 else groups
    y = _conv(x, branch // 4, 1, groups=first_groups, name=f"{name}_conv1")
    y = _bn(y, f"{name}_conv1", relu=True)
    if first_groups > 1:
        y = channel_shuffle(y, first_groups, f"{name}_shuffle")
    y = _bn(_depthwise_conv(y, 3, strides, name=f"{name}_dw"), f"{name}_dw", relu=True)
    y = _bn(_conv(y, branch, 1, groups=groups, name=f"{name}_conv3"), f"{name}_conv3")
    if strides == 2:
        # AvgPool2d(3, 2, padding=1) counts the zero padding (count_include_pad).
        shortcut = keras.layers.ZeroPadding2D(1, name=f"{name}_pool_pad")(x)
        shortcut = keras.layers.AveragePooling2D(3, 2, name=f"{name}_pool")(shortcut)
        y = keras.layers.Concatenate(name=f"{name}_concat")([y, shortcut])
    else:
        y = keras.layers.Add(name=f"{name}_add")([y, x])
    return L.relu(y, name=output_name or f"{name}_out")


def shufflenetv1(num_classes=100, input_shape=(32, 32, 3), groups=3,
                 widths=(240, 480, 960), units=(4, 8, 4)):
    """ShuffleNet V1 (RepDistiller `ShuffleV1`: groups 3, widths 240/480/960).

    Args:
        num_classes: number of logits.
        input_shape: `(H, W, C)` of the images (H, W fixed).
        groups: groups of the 1x1 convolutions.
        widths: output channels of the three stages.
        units: units per stage; the first of each has stride 2.

    Returns:
        A functional `keras.Model` `images -> logits`, taps `stage1..3`.
    """
    inputs, x = _stem(input_shape)
    for stage, (width, n) in enumerate(zip(widths, units), start=1):
        for i in range(n):
            x = shuffle_unit_v1(
                x, width, 2 if i == 0 else 1, groups, f"s{stage}u{i + 1}",
                output_name=f"stage{stage}" if i == n - 1 else None,
            )
    return keras.Model(inputs, L.classifier(x, num_classes), name="shufflenetv1")


# -- ShuffleNet V2 ----------------------------------------------------------


def _branch_v2(x, channels, strides, name):
    """1x1 conv-BN-ReLU -> 3x3 depthwise-BN -> 1x1 conv-BN-ReLU."""
    y = _bn(_conv(x, channels, 1, name=f"{name}_conv1"), f"{name}_conv1", relu=True)
    y = _bn(_depthwise_conv(y, 3, strides, name=f"{name}_dw"), f"{name}_dw")
    return _bn(_conv(y, channels, 1, name=f"{name}_conv2"), f"{name}_conv2", relu=True)


def down_unit_v2(x, out_channels, name):
    """Stride-2 unit: both halves of the output see the whole input."""
    left = _bn(_depthwise_conv(x, 3, 2, name=f"{name}_left_dw"), f"{name}_left_dw")
    left = _conv(left, out_channels // 2, 1, name=f"{name}_left_conv")
    left = _bn(left, f"{name}_left_conv", relu=True)
    right = _branch_v2(x, out_channels // 2, 2, f"{name}_right")
    y = keras.layers.Concatenate(name=f"{name}_concat")([left, right])
    return channel_shuffle(y, 2, f"{name}_shuffle")


def basic_unit_v2(x, name, output_name=None):
    """Stride-1 unit: the first half passes through, the second is convolved;
    the shuffle's last layer is named `output_name` if given."""
    kept, transformed = split_channels(x, f"{name}_split")
    transformed = _branch_v2(transformed, transformed.shape[-1], 1, name)
    y = keras.layers.Concatenate(name=f"{name}_concat")([kept, transformed])
    return channel_shuffle(y, 2, output_name or f"{name}_shuffle")


def shufflenetv2(num_classes=100, input_shape=(32, 32, 3),
                 widths=(116, 232, 464), units=(3, 7, 3), last_width=1024):
    """ShuffleNet V2 at width 1 (RepDistiller `ShuffleV2`).

    Args:
        num_classes: number of logits.
        input_shape: `(H, W, C)` of the images (H, W fixed).
        widths: output channels of the three stages.
        units: stride-1 units per stage, after its stride-2 unit.
        last_width: channels of the 1x1 conv before pooling.

    Returns:
        A functional `keras.Model` `images -> logits`, taps `stage1..3`.
    """
    inputs, x = _stem(input_shape)
    for stage, (width, n) in enumerate(zip(widths, units), start=1):
        x = down_unit_v2(x, width, f"s{stage}down")
        for i in range(n):
            x = basic_unit_v2(
                x, f"s{stage}u{i + 1}", output_name=f"stage{stage}" if i == n - 1 else None
            )
    x = _bn(_conv(x, last_width, 1, name="head_conv"), "head", relu=True)
    return keras.Model(inputs, L.classifier(x, num_classes), name="shufflenetv2")


models.register_all({"shufflenetv1": shufflenetv1, "shufflenetv2": shufflenetv2})
