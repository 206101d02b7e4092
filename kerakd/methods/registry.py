"""The method registry: `register` a `Method` under a name, `get` it by name.

A module of its own so that the method modules import `register` from here
while the package `kerakd.methods`, which imports all of them, is still
loading. The package re-exports every name of this module.

Example:

>>> "kd" in kerakd.methods.available()
True
>>> kerakd.methods.get("kd", temperature=2.0).temperature
2.0
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
    # Imported here: `compose` builds on this registry (it looks the
    # components up by name), so it cannot be imported before it.
    from kerakd.methods.compose import Compose

    return Compose.from_names(names, **kwargs)


def register(name):
    """Registers a `Method` subclass under `name` (and with Keras saving).

    The class is registered with `keras.saving` as `"kerakd>ClassName"`, the
    name saved `.keras` files refer to; moving the class to another module
    keeps them loading.

    Args:
        name: the name `get` and the `--method` flag know it by.
    """

    def decorator(cls):
        cls = keras.saving.register_keras_serializable(package="kerakd")(cls)
        return registry.register(name)(cls)

    return decorator
