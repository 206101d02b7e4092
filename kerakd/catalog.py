"""What `kerakd-train` accepts, known without importing TensorFlow.

`kerakd-train` checks its flags before it loads TensorFlow (which takes
seconds to a minute), so that a typo fails at once. The flags come from the
registered methods' constructors and the zoo, which are Keras code; their
description (each method's arguments with type, default and help, its
renamed arguments, whether it needs a teacher; the zoo's model names; the
tap kinds; the NaN policies) is kept in `catalog.json` next to this module.

`current()` is that description. Once `kerakd.methods` is imported (a
notebook, a test, a method registered at run time), it is read from the live
registries, so that methods registered in Python get flags too; before, from
the committed file, which `python -m kerakd.catalog` rewrites and
tests/test_catalog.py keeps equal to the live description.

Example:

>>> from kerakd import catalog
>>> entry = catalog.current()["methods"]["at"]
>>> entry["requires_teacher"], entry["arguments"]["at_weight"]
(True, {'type': 'float', 'help': "weight of the `at` term, the reference code's beta (default 1000).", 'default': '1000.0'})
>>> catalog.default(entry["arguments"]["at_weight"])
1000.0
"""

import ast
import functools
import inspect
import json
import os
import re
import sys
import types
import typing

CATALOG_FILE = os.path.join(os.path.dirname(__file__), "catalog.json")

# The default of an argument that has none.
NO_DEFAULT = inspect.Parameter.empty
# The value types a method flag can have; None: any Python literal.
VALUE_TYPES = {t.__name__: t for t in (bool, int, float, str, list, tuple, dict)}


def docstring_args(docstring):
    """`{argument: description}` from a Google-style docstring's Args section.

    Example:

    >>> from kerakd.catalog import docstring_args
    >>> docstring_args('''Adds.
    ...
    ...     Args:
    ...         x: the first
    ...             summand.
    ...         y (int): the second.
    ...     ''')
    {'x': 'the first summand.', 'y': 'the second.'}
    """
    found, current, indent = {}, None, None
    in_args = False
    for line in inspect.cleandoc(docstring or "").splitlines():
        if line.strip() in ("Args:", "Arguments:"):
            in_args, indent = True, None
            continue
        if not in_args:
            continue
        if line.strip() and not line.startswith(" "):
            break  # the next section
        depth = len(line) - len(line.lstrip())
        match = re.match(r"(\w+)(?: \(.*?\))?:\s*(.*)", line.strip())
        if match and (indent is None or depth == indent):
            indent, current = depth, match.group(1)
            found[current] = match.group(2)
        elif current and line.strip():
            found[current] += " " + line.strip()
    return found


def _value_type(parameter):
    """The type of a constructor argument's values: its default's, else the
    annotation's (`kd_weight: float | None = None`, a default resolved by the
    method, still makes a float flag); None for anything else."""
    if parameter.default is not inspect.Parameter.empty and parameter.default is not None:
        return type(parameter.default)
    annotation = parameter.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else inspect.Parameter.empty
    return annotation if annotation in (bool, int, float, str) else None


def _describe_argument(name, parameter, help_text):
    value_type = _value_type(parameter)
    if value_type is not None and VALUE_TYPES.get(value_type.__name__) is not value_type:
        raise TypeError(
            f"Method '{name}' argument '{parameter.name}' has a default of type "
            f"{value_type.__name__}, which no flag can hold: use one of "
            f"{sorted(VALUE_TYPES)} or None.")
    entry = {"type": None if value_type is None else value_type.__name__, "help": help_text}
    if parameter.default is not inspect.Parameter.empty:
        entry["default"] = repr(parameter.default)
        if default(entry) != parameter.default:
            raise TypeError(
                f"Method '{name}' argument '{parameter.name}' has the default "
                f"{parameter.default!r}, which is not a Python literal.")
    return entry


def describe_method(name, factory):
    """The catalog entry of method `name` (its registered class `factory`)."""
    docs = docstring_args(factory.__doc__)
    parameters = inspect.signature(factory).parameters.values()
    return {
        "requires_teacher": bool(factory.requires_teacher),
        "arguments": {
            p.name: _describe_argument(name, p, docs.get(p.name, p.name))
            for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        },
        "renamed": dict(getattr(factory.__init__, "renamed_arguments", {})),
    }


def describe():
    """The catalog of the live registries (imports kerakd's Keras code)."""
    from kerakd import methods
    from kerakd import models

    # Registering adds names and never replaces a factory: the names key it.
    return _describe(tuple(methods.available()), tuple(models.available()))


@functools.cache
def _describe(method_names, model_names):
    from kerakd import callbacks
    from kerakd import methods
    from kerakd import taps

    return {
        "methods": {name: describe_method(name, methods.registry.factory(name))
                    for name in method_names},
        "models": list(model_names),
        "tap_kinds": sorted(taps.TAP_KINDS),
        "nan_policies": list(callbacks.NAN_POLICIES),
    }


@functools.cache
def committed():
    """The catalog in `catalog.json` (reads no Keras code)."""
    with open(CATALOG_FILE) as file:
        return json.load(file)


def current():
    """The live catalog once `kerakd.methods` is imported, else the committed one."""
    return describe() if "kerakd.methods" in sys.modules else committed()


def default(argument):
    """The default value of a catalog argument entry (`NO_DEFAULT` when the
    argument has none)."""
    if "default" not in argument:
        return NO_DEFAULT
    return ast.literal_eval(argument["default"])


def value_type(argument):
    """The Python type of a catalog argument entry's values (None: a literal)."""
    return None if argument["type"] is None else VALUE_TYPES[argument["type"]]


def write(path=CATALOG_FILE):
    """Writes the live catalog to `path` (`python -m kerakd.catalog`)."""
    with open(path, "w") as file:
        json.dump(describe(), file, indent=1)  # arguments in constructor order
        file.write("\n")


if __name__ == "__main__":
    write()
    print(f"wrote {CATALOG_FILE}")
