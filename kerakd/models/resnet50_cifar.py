"""ResNet-50 with a CIFAR stem: RepDistiller's `resnetv2.py` `ResNet50`, the
ResNet50 teacher of the CRD benchmark (79.34% on CIFAR-100).

A 3x3 stride-1 stem conv (64) -> BN -> ReLU (no max-pool), four stages of
bottlenecks (3, 4, 6, 3 blocks, inner widths 64/128/256/512, 4x expansion,
the stride on the 3x3 conv, stages 2-4 halving the resolution), 1x1 conv +
BN shortcuts where the shape changes, global pooling and a linear
classifier from 2048 features. 23.7M parameters for 100 classes.

Initialized as the reference: every conv kaiming-normal over fan-out, BN
weight 1 and bias 0, the classifier PyTorch's default `nn.Linear`.
`kerakd.models.from_pytorch("resnet50_cifar", ckpt)` fills it from the
published checkpoint (`docs/teachers.md`).

Taps (all post-ReLU): `stage1..4` (32x32x256, 16x16x512, 8x8x1024, 4x4x2048
at 32 px), `block1..16` (every bottleneck's output), `pool`.

Example:

>>> model = kerakd.models.get("resnet50_cifar", num_classes=100)   # 32x32x3 images
>>> [tuple(model.get_layer(name).output.shape[1:])
...  for name in kerakd.taps.resolve_taps(model, "stages")]
[(32, 32, 256), (16, 16, 512), (8, 8, 1024), (4, 4, 2048)]
>>> model.count_params()
23758372
"""

import keras

from kerakd import models
from kerakd.models import layers as L
from kerakd.models.resnet_imagenet import WIDTHS, bottleneck_block

BLOCKS = (3, 4, 6, 3)
INIT = "kaiming_fan_out"  # resnetv2.py: kaiming_normal_(mode="fan_out") on every conv


def resnet50_cifar(num_classes=100, input_shape=(32, 32, 3)):
    """RepDistiller's CIFAR ResNet50 (`models/resnetv2.py`).

    Args:
        num_classes: number of logits.
        input_shape: `(H, W, C)` of the images.

    Returns:
        A functional `keras.Model` `images -> logits`, taps `stage1..4`,
        `block1..16`.
    """
    inputs = keras.Input(input_shape, name="images")
    x = L.conv(inputs, 64, 3, name="stem_conv", init=INIT)
    x = L.relu(L.batch_norm("stem_bn")(x), name="stem_relu")
    k = 0
    for stage, (filters, n) in enumerate(zip(WIDTHS, BLOCKS), start=1):
        for i in range(n):
            k += 1
            strides = 2 if stage > 1 and i == 0 else 1
            x = bottleneck_block(x, filters, strides, f"s{stage}b{i + 1}",
                                 output_name=f"block{k}", init=INIT)
        x = keras.layers.Identity(name=f"stage{stage}")(x)
    outputs = L.classifier(x, num_classes, init="torch_default")
    return keras.Model(inputs, outputs, name="resnet50_cifar")


models.register_all({"resnet50_cifar": resnet50_cifar})
