"""The docstring examples of every kerakd module run and print what they say.

Each example (a docstring's `>>>` block) is its own test, named by the
object's qualified name. Examples see only `kerakd`, `keras` and `np`;
everything else they use they define or import themselves, so a reader can
paste one into a session as it stands.
"""

import doctest
import importlib
import importlib.util
import os
import re

import keras
import numpy as np
import pytest

import kerakd

# About 180 s of CPU over its 74 examples (model builds, a few one-step fits,
# one kerakd-train epoch, a TFLite export): ~90 s on 2 idle cores, so the
# quick command (-m "not slow") skips it.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "kerakd")

# Modules that import an optional extra, and examples that use one (by their
# test's name): skipped where the extra is missing.
MODULES_NEED = {"kerakd.torch_reference": "torch"}
EXAMPLES_NEED = {
    "kerakd.models.pytorch_import": "torch",  # writes a .pth of a reference model
}

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def unimported_submodules(example):
    """`kerakd.<name>` the example uses that `import kerakd` does not give
    (not in `kerakd.__all__`) and that the example does not import: here
    every module is imported, in a fresh session it would be missing."""
    source = "".join(e.source for e in example.examples)
    imported = set(re.findall(r"(?:import|from) kerakd\.(\w+)", source))
    for names in re.findall(r"from kerakd import \(?([\w, ]+)", source):
        imported.update(n.strip() for n in names.split(","))
    used = set(re.findall(r"\bkerakd\.(\w+)", source))
    return sorted(used - set(kerakd.__all__) - imported)


def module_names():
    """Every module under kerakd/, by dotted name, from the files (no import)."""
    names = []
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if not file.endswith(".py"):
                continue
            parts = os.path.relpath(os.path.join(folder, file[:-3]), ROOT).split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return sorted(names)


def collect():
    """`pytest.param`s `(example, extra it needs)`; a module that cannot be
    imported without its extra gives `(module name, extra)`, one whose
    docstrings do not parse `(error message, None)`."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    cases = []
    for name in module_names():
        extra = MODULES_NEED.get(name)
        if extra and importlib.util.find_spec(extra) is None:
            cases.append(pytest.param(name, extra, id=f"{name} (needs {extra})"))
            continue
        module = importlib.import_module(name)
        try:
            tests = finder.find(module, name, globs={})
        except ValueError as error:  # doctest's message for a malformed example
            cases.append(pytest.param(f"{name}: {error}", None, id=name))
            continue
        for test in tests:
            if test.examples:
                cases.append(pytest.param(test, EXAMPLES_NEED.get(test.name), id=test.name))
    return cases


@pytest.mark.parametrize("example, extra", collect())
def test_docstring_example(example, extra, tmp_path, monkeypatch):
    if extra:
        pytest.importorskip(extra)
    assert isinstance(example, doctest.DocTest), example
    missing = unimported_submodules(example)
    assert not missing, f"the example uses kerakd.{missing[0]} without importing it"
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    example.globs = {"kerakd": kerakd, "keras": keras, "np": np}
    output = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    runner.run(example, out=output.append, clear_globs=True)
    assert not runner.failures, "".join(output)
