"""Layers and initializers with the numerics of the PyTorch reference code.

- `initializers`: the reference code's initializers as core Keras ones.
- `layers`: `linear`, `conv2d`, `depthwise_conv2d` initialized as PyTorch's
  defaults.
- `BatchNormalization`: PyTorch's moving-variance update (and defaults), on
  TensorFlow's fused kernel; `core_keras(model)` swaps it for Keras's own
  (identical inference) so that a trained model loads without kerakd.
"""

from kerakd.nn import initializers, layers
from kerakd.nn.batch_norm import BatchNormalization, core_keras

__all__ = ["BatchNormalization", "core_keras", "initializers", "layers"]
