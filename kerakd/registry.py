"""Name -> factory registries shared by the CLI, configs and notebooks."""

import difflib
import importlib
import pkgutil


def import_submodules(package_name, package_path):
    """Imports every module of a package (so that each registers itself)."""
    for module in pkgutil.iter_modules(package_path):
        importlib.import_module(f"{package_name}.{module.name}")


def unknown_name_message(kind, name, available):
    """Why `name` is not one of the `available` names of `kind`, with close names."""
    close = difflib.get_close_matches(name, available, n=3)
    hint = f" Did you mean {close}?" if close else ""
    return f"Unknown {kind} '{name}'.{hint} Available: {sorted(available)}."


class Registry:
    """A mapping from names to factories, with helpful errors.

    Example:

    >>> from kerakd.registry import Registry
    >>> schedules = Registry("schedule")
    >>> @schedules.register("constant")
    ... def constant(rate=0.1):
    ...     return lambda epoch: rate
    >>> schedules.available()
    ['constant']
    >>> schedules.get("constant", rate=0.05)(epoch=3)
    0.05
    >>> schedules.get("constnt")
    Traceback (most recent call last):
    ...
    ValueError: Unknown schedule 'constnt'. Did you mean ['constant']? Available: ['constant'].
    """

    def __init__(self, kind):
        self.kind = kind
        self._factories = {}

    def register(self, name):
        def decorator(factory):
            if name in self._factories:
                raise ValueError(f"{self.kind} '{name}' is registered twice.")
            self._factories[name] = factory
            return factory

        return decorator

    def available(self):
        return sorted(self._factories)

    def factory(self, name):
        if name not in self._factories:
            raise ValueError(unknown_name_message(self.kind, name, self.available()))
        return self._factories[name]

    def get(self, name, **kwargs):
        return self.factory(name)(**kwargs)
