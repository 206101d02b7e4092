"""Distillation methods, by name.

>>> kerakd.methods.available()
>>> method = kerakd.methods.get("kd", temperature=4)
"""

import keras

from kerakd.registry import Registry

registry = Registry("method")
get = registry.get
available = registry.available


def register(name):
    """Registers a `Method` subclass under `name` (and with Keras saving)."""

    def decorator(cls):
        cls = keras.saving.register_keras_serializable(package="kerakd")(cls)
        return registry.register(name)(cls)

    return decorator


from kerakd.methods.base import Method, MethodOutput, StepData, TapSpec  # noqa: E402,F401
from kerakd.registry import import_submodules  # noqa: E402

# Each module registers its methods when imported.
import_submodules(__name__, __path__)
