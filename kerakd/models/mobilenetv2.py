"""MobileNetV2 at half width, the CIFAR student of the distillation papers.

RepDistiller's `mobilenetv2.py` `mobile_half` (from "Knowledge Distillation
via Route Constrained Optimization"): expansion 6, width multiplier 0.5, so
bottleneck widths 8/12/16/32/48/80/160 after a 16-channel stride-2 stem, and
a 1x1 conv to 1280 channels (not scaled below width 1) before pooling.
As in the reference (unlike torchvision), every inverted residual has its
1x1 expansion conv, the first one (expansion 1) included; a block adds its
input back when its stride is 1 and its width unchanged.

Deviation: the reference asserts a multiple-of-32 input and pools with a
fixed window; here pooling is global, so any input size works.

Taps: `stage1..4`, the outputs of the last inverted residual at each of the
four resolutions below the stem (groups 1, 2, 4, 6: the reference's
`f1..f4`, SemCKD's convention): the linear bottleneck's BN output, plus the
shortcut where the block has one; no ReLU. At 32 px: 16x16x12, 8x8x16,
4x4x48, 2x2x160. `block1..17`: the output of every inverted residual, in the
same form (AFD's "blocks" kind; the AFD paper gives no MobileNetV2 list, so
kerakd taps them all, as it taps every residual block of a ResNet). And
`pool`.

Example:

>>> model = kerakd.models.get("mobilenetv2", num_classes=100)   # 32x32x3 images
>>> [tuple(model.get_layer(name).output.shape[1:])
...  for name in kerakd.taps.resolve_taps(model, "stages")]
[(16, 16, 12), (8, 8, 16), (4, 4, 48), (2, 2, 160)]
>>> model.count_params()
831204
"""

import keras

from kerakd import models
from kerakd.models import layers as L

EXPANSION = 6
WIDTH = 0.5
# (expansion, width at multiplier 1, blocks, first stride) per group.
GROUPS = (
    (1, 16, 1, 1),
    (EXPANSION, 24, 2, 1),
    (EXPANSION, 32, 3, 2),
    (EXPANSION, 64, 4, 2),
    (EXPANSION, 96, 3, 1),
    (EXPANSION, 160, 3, 2),
    (EXPANSION, 320, 1, 1),
)
TAPPED_GROUPS = (1, 2, 4, 6)  # the last group at each resolution
LAST_WIDTH = 1280


def _conv_bn_relu(x, filters, kernel_size, strides, name):
    x = L.conv(x, filters, kernel_size, strides, name=f"{name}_conv")
    return L.relu(L.batch_norm(f"{name}_bn")(x), name=f"{name}_relu")


def inverted_residual(x, filters, strides, expansion, name, output_name=None):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (+ input).

    The block's output layer (the Add, or the projection BN without a
    shortcut) is named `output_name` when given.
    """
    residual = strides == 1 and x.shape[-1] == filters
    y = _conv_bn_relu(x, x.shape[-1] * expansion, 1, 1, f"{name}_expand")
    y = L.depthwise_conv(y, 3, strides, name=f"{name}_dw")
    y = L.relu(L.batch_norm(f"{name}_dw_bn")(y), name=f"{name}_dw_relu")
    y = L.conv(y, filters, 1, name=f"{name}_project")
    projected_name = output_name if output_name and not residual else f"{name}_project_bn"
    y = L.batch_norm(projected_name)(y)
    if residual:
        y = keras.layers.Add(name=output_name or f"{name}_add")([x, y])
    return y


def mobilenetv2(num_classes=100, input_shape=(32, 32, 3)):
    """MobileNetV2 with width 0.5 and expansion 6 (RepDistiller `mobile_half`).

    Args:
        num_classes: number of logits.
        input_shape: `(H, W, C)` of the images.

    Returns:
        A functional `keras.Model` `images -> logits`, taps `stage1..4` and
        `block1..17`.
    """
    inputs = keras.Input(input_shape, name="images")
    x = _conv_bn_relu(inputs, int(32 * WIDTH), 3, 2, "stem")
    block = 0
    for g, (expansion, width, blocks, first_stride) in enumerate(GROUPS):
        for i in range(blocks):
            block += 1
            x = inverted_residual(
                x, int(width * WIDTH), first_stride if i == 0 else 1, expansion,
                f"g{g}b{i + 1}", output_name=f"block{block}",
            )
        if g in TAPPED_GROUPS:
            x = keras.layers.Identity(name=f"stage{TAPPED_GROUPS.index(g) + 1}")(x)
    x = _conv_bn_relu(x, LAST_WIDTH, 1, 1, "head")
    return keras.Model(inputs, L.classifier(x, num_classes, init="normal"), name="mobilenetv2")


models.register_all({"mobilenetv2": mobilenetv2})
