"""The layout of `kerakd.methods` and `kerakd.blocks`, read from the sources.

`kerakd/methods/__init__.py` imports every module of the package by name (no
directory scan), and no module of the package imports the package itself:
while `__init__` runs, the package is half-initialised, and a method module
reaching into it would see whatever happens to be defined so far.
"""

import ast
import importlib
import os
import zipfile

import keras
import numpy as np

import kerakd
from kerakd.registry import Registry

# The module; `kerakd.methods.registry` (an attribute) is the `Registry` it defines.
registry_names = importlib.import_module("kerakd.methods.registry")

PACKAGE = os.path.dirname(kerakd.methods.__file__)
MODULES = sorted(
    name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py") and name != "__init__.py"
)


def _tree(module):
    with open(os.path.join(PACKAGE, f"{module}.py")) as f:
        return ast.parse(f.read())


def _imported_by_init():
    """Names of the package's modules that `__init__.py` imports."""
    imported = set()
    for node in ast.walk(_tree("__init__")):
        if isinstance(node, ast.ImportFrom) and node.module == "kerakd.methods":
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kerakd.methods."):
            imported.add(node.module.split(".")[2])
    return imported


def test_init_imports_every_module_of_the_package_by_name():
    assert set(MODULES) - _imported_by_init() == set()
    assert "pkgutil" not in open(os.path.join(PACKAGE, "__init__.py")).read()


def test_no_module_of_the_package_imports_the_package():
    offenders = []
    for module in MODULES:
        for node in ast.walk(_tree(module)):
            if isinstance(node, ast.Import):
                offenders += [f"{module}: import {a.name}" for a in node.names
                              if a.name == "kerakd.methods"]
            elif isinstance(node, ast.ImportFrom) and node.module == "kerakd":
                offenders += [f"{module}: from kerakd import methods" for a in node.names
                              if a.name == "methods"]
            elif isinstance(node, ast.ImportFrom) and node.module == "kerakd.methods":
                # `from kerakd.methods import dkd` (a module) is fine; a name
                # defined by `__init__` (`register`, `get`) is not.
                offenders += [f"{module}: from kerakd.methods import {a.name}"
                              for a in node.names if a.name not in MODULES]
    assert offenders == []


def test_every_register_decorator_is_in_the_registry():
    registered = set()
    for module in MODULES:
        for node in ast.walk(_tree(module)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "register" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                registered.add(node.args[0].value)
    assert "kd" in registered and "dsn" in registered
    # Other tests of the same process register their own methods (a doc's
    # example): only kerakd's count.
    built_in = {name for name in kerakd.methods.available()
                if kerakd.methods.registry.factory(name).__module__.startswith("kerakd.methods.")}
    assert registered == built_in


def test_package_reexports_the_registry_module():
    assert isinstance(kerakd.methods.registry, Registry)
    assert kerakd.methods.registry is registry_names.registry
    for name in ("get", "available", "register"):
        assert getattr(kerakd.methods, name) is getattr(registry_names, name)
    assert type(kerakd.methods.get("kd")).__name__ == "KD"
    assert type(kerakd.methods.get("fitnet+crd")).__name__ == "Compose"


def test_registered_keras_names_do_not_name_modules():
    # Saved `.keras` files find these classes by the registered name, so
    # moving a module (as `bifpn` and `branches` moved to `kerakd.blocks`)
    # keeps old files loading.
    for cls in [kerakd.methods.registry.factory(n) for n in kerakd.methods.available()] + [
        kerakd.blocks.bifpn.FastNormalizedFusion
    ]:
        name = keras.saving.get_registered_name(cls)
        assert name == f"kerakd>{cls.__name__}"
        assert keras.saving.get_registered_object(name) is cls


def test_blocks_are_their_own_package():
    assert not any(m in MODULES for m in ("branches", "bifpn"))
    assert kerakd.blocks.branches.builders.available() == ["separable"]
    assert callable(kerakd.blocks.bifpn.bifpnc)


def test_a_bifpnc_saved_when_it_lived_in_kerakd_methods_loads(tmp_path):
    # A Distiller's file names FRSKD (`kerakd>FRSKD`), which rebuilds its
    # BiFPNc on load; a BiFPNc saved on its own names its fusion layers'
    # module, `kerakd.methods.bifpn` before the move: the registered name
    # `kerakd>FastNormalizedFusion` still finds the class.
    model = kerakd.blocks.bifpn.bifpnc([(None, 8, 8, 4), (None, 4, 4, 8)], 3)
    model.save(tmp_path / "new.keras")
    with zipfile.ZipFile(tmp_path / "new.keras") as new, \
            zipfile.ZipFile(tmp_path / "old.keras", "w") as old:
        for item in new.infolist():
            data = new.read(item.filename)
            if item.filename == "config.json":
                config = data.decode()
                assert '"module": "kerakd.blocks.bifpn"' in config
                data = config.replace('"module": "kerakd.blocks.bifpn"',
                                      '"module": "kerakd.methods.bifpn"').encode()
            old.writestr(item, data)
    loaded = keras.saving.load_model(tmp_path / "old.keras")
    rng = np.random.default_rng(0)
    features = [rng.normal(size=(2, 8, 8, 4)).astype("float32"),
                rng.normal(size=(2, 4, 4, 8)).astype("float32")]
    assert isinstance(loaded.get_layer("td0_fusion"), kerakd.blocks.bifpn.FastNormalizedFusion)
    for expected, actual in zip(model(features), loaded(features)):
        np.testing.assert_array_equal(np.asarray(expected), np.asarray(actual))
