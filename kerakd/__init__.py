"""kerakd: knowledge distillation for Keras 3 (TensorFlow backend).

Example (a trained teacher comes from `keras.models.load_model`):

>>> import kerakd
>>> teacher = kerakd.models.get("resnet32x4", num_classes=100)
>>> student = kerakd.models.get("resnet8x4", num_classes=100)
>>> distiller = kerakd.Distiller(student, kerakd.methods.get("kd"), teacher)
>>> tuple(distiller(np.zeros((2, 32, 32, 3))).shape)   # the student's logits
(2, 100)

`import kerakd` loads TensorFlow only when a name of the package is first
used (`kerakd.Distiller`, `kerakd.methods`, ...), so that `kerakd-train` can
check its flags before. Keras finds kerakd's saved classes once they are
imported: in a new process, call `kerakd.import_all()` (imports every part) before
`keras.models.load_model` reads a saved Distiller or method. A saved student
needs nothing of kerakd.
"""

import importlib
import importlib.util

__version__ = "0.1.0"

if importlib.util.find_spec("tensorflow") is None:  # pragma: no cover - the install
    raise ImportError(
        "kerakd needs TensorFlow. Install it with the extra for your machine: "
        "`pip install kerakd[cpu]` or `pip install kerakd[gpu]`."
    )

_SUBPACKAGES = ("data", "losses", "methods", "models", "nn", "taps")
__all__ = ["Distiller", *_SUBPACKAGES, "import_all", "__version__"]


def import_all():
    """Imports every part of kerakd (TensorFlow, Keras and kerakd's registered
    Keras classes, which `keras.models.load_model` needs to read a saved
    Distiller or method)."""
    for name in _SUBPACKAGES:
        importlib.import_module(f"kerakd.{name}")
    from kerakd.distiller import Distiller

    globals()["Distiller"] = Distiller


def __getattr__(name):
    # Only what is asked: a module of kerakd that runs `from kerakd import
    # models` while the zoo is still loading must get the loading module.
    if name in _SUBPACKAGES:
        return importlib.import_module(f"kerakd.{name}")
    if name == "Distiller":
        from kerakd.distiller import Distiller

        return Distiller
    raise AttributeError(f"module 'kerakd' has no attribute '{name}'")


def __dir__():
    return sorted({*globals(), *__all__})
