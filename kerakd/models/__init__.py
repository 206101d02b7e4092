"""The model zoo: functional Keras models from core layers, by name.

Every model is a functional `keras.Model` of core Keras layers and one kerakd
layer, `kerakd.nn.BatchNormalization` (PyTorch's moving-variance update), each
initialized as its reference zoo does (`kerakd.models.layers`). For
deployment, `core_keras(model)` swaps that layer for Keras's own (identical
inference), so the saved student loads in a process that never imports
kerakd; `kerakd-train` saves its `student.keras` and `best.keras` that way.
Tap layers follow the naming convention of `kerakd.taps`.

Example:

>>> kerakd.models.available()
['mobilenetv2', 'resnet110', 'resnet14', 'resnet18', 'resnet18_cifar', 'resnet20',
 'resnet32', 'resnet32x4', 'resnet34', 'resnet34_cifar', 'resnet44', 'resnet50',
 'resnet50_cifar', 'resnet56', 'resnet8', 'resnet8x4', 'shufflenetv1', 'shufflenetv2',
 'vgg11', 'vgg13', 'vgg16', 'vgg19', 'vgg8', 'wrn_16_1', 'wrn_16_2', 'wrn_40_1', 'wrn_40_2']
>>> model = kerakd.models.get("resnet8x4", num_classes=100, input_shape=(32, 32, 3))
>>> model.input_shape, model.output_shape, model.count_params()
((None, 32, 32, 3), (None, 100), 1236292)
"""

from kerakd.nn import core_keras  # noqa: F401  (a public name of this package)
from kerakd.registry import Registry

registry = Registry("model")
available = registry.available


def get(name, num_classes=100, input_shape=(32, 32, 3)):
    """Builds zoo model `name` for `num_classes` classes and `input_shape` images."""
    return registry.factory(name)(num_classes=num_classes, input_shape=tuple(input_shape))


def register_all(factories):
    """Registers `{name: factory(num_classes, input_shape)}` (a zoo module's FACTORIES)."""
    for name, factory in factories.items():
        registry.register(name)(factory)


from kerakd.registry import import_submodules  # noqa: E402

# Each zoo module registers its models when imported.
import_submodules(__name__, __path__)
from kerakd.models.pytorch_import import CheckpointMismatchError, from_pytorch  # noqa: E402,F401
