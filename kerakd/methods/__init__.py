"""Distillation methods, by name.

>>> kerakd.methods.available()
>>> method = kerakd.methods.get("kd", temperature=4)
>>> both = kerakd.methods.get("fitnet+crd", crd={"num_data": 50000})
"""

import keras

from kerakd.registry import Registry

registry = Registry("method")
available = registry.available


def get(name, **kwargs):
    """A method by registered name, or a composition of several.

    Args:
        name: a registered name (`"kd"`), or several joined by `+`
            (`"fitnet+crd"`) or listed (`["fitnet", "crd"]`), which return a
            `kerakd.methods.compose.Compose` summing their terms.
        **kwargs: the method's hyperparameters; for a composition,
            `{name: {hyperparameter: value}}` per method.
    """
    names = name.split("+") if isinstance(name, str) else list(name)
    if len(names) == 1:
        return registry.get(names[0].strip(), **kwargs)
    return compose.Compose.from_names(names, **kwargs)


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

from kerakd.methods import compose  # noqa: E402
