"""Wide ResNets WRN-d-k of the CRD benchmark (RepDistiller's `wrn.py`).

Pre-activation blocks (BN-ReLU-conv); widths 16, 16k, 32k, 64k; a final
BN-ReLU before pooling. `(d - 4) / 6` blocks per stage; no dropout.

Taps:
- `stage1..3`: raw residual sums at the end of each stage (no BN, no ReLU),
  the reference's features and SemCKD's convention.
- `block1..N`: each block's output after the NEXT block's BN + ReLU (the
  true input of the next conv; the final BN-ReLU for the last block), AFD's
  convention.
- `pool`.
"""

import keras

from kerakd import models
from kerakd.models import layers as L

CONFIGS = {
    "wrn_16_1": (16, 1),
    "wrn_16_2": (16, 2),
    "wrn_40_1": (40, 1),
    "wrn_40_2": (40, 2),
}


def _preact(x, name, tap_name=None):
    y = L.batch_norm(f"{name}_bn")(x)
    return L.relu(y, name=tap_name or f"{name}_relu")


def wide_block(x, activated, filters, strides, name, out_name=None):
    """One pre-activation block; `activated` is relu(bn(x)) computed by the caller."""
    if x.shape[-1] == filters and strides == 1:
        shortcut = x
    else:
        shortcut = L.conv(activated, filters, 1, strides, name=f"{name}_shortcut")
    y = L.conv(activated, filters, 3, strides, name=f"{name}_conv1")
    y = _preact(y, f"{name}_mid")
    y = L.conv(y, filters, 3, name=f"{name}_conv2")
    return keras.layers.Add(name=out_name or f"{name}_add")([y, shortcut])


def wide_resnet(depth, widen, num_classes, input_shape, name):
    if (depth - 4) % 6:
        raise ValueError(f"A WRN's depth must be 6n+4, got {depth}.")
    n = (depth - 4) // 6
    widths = (16 * widen, 32 * widen, 64 * widen)
    inputs = keras.Input(input_shape, name="images")
    x = L.conv(inputs, 16, 3, name="stem_conv")
    block = 0
    for stage, filters in enumerate(widths, start=1):
        for i in range(n):
            # The BN-ReLU opening this block closes the previous one: AFD's tap.
            tap = f"block{block}" if block else None
            activated = _preact(x, f"s{stage}b{i + 1}_pre", tap_name=tap)
            block += 1
            out_name = f"stage{stage}" if i == n - 1 else None
            x = wide_block(x, activated, filters, 2 if stage > 1 and i == 0 else 1,
                           f"s{stage}b{i + 1}", out_name=out_name)
    x = _preact(x, "final", tap_name=f"block{block}")
    return keras.Model(inputs, L.classifier(x, num_classes, init="zero_bias"), name=name)


def _factory(name):
    depth, widen = CONFIGS[name]

    def build(num_classes=100, input_shape=(32, 32, 3)):
        return wide_resnet(depth, widen, num_classes, input_shape, name)

    build.__name__ = name
    build.__doc__ = f"WRN-{depth}-{widen}."
    return build


models.register_all({name: _factory(name) for name in CONFIGS})
