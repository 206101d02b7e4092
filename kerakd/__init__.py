"""kerakd: knowledge distillation for Keras 3 (TensorFlow backend).

Example (a trained teacher comes from `keras.models.load_model`):

>>> import kerakd
>>> teacher = kerakd.models.get("resnet32x4", num_classes=100)
>>> student = kerakd.models.get("resnet8x4", num_classes=100)
>>> distiller = kerakd.Distiller(student, kerakd.methods.get("kd"), teacher)
>>> tuple(distiller(np.zeros((2, 32, 32, 3))).shape)   # the student's logits
(2, 100)
"""

__version__ = "0.1.0"

try:
    import tensorflow  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        "kerakd needs TensorFlow. Install it with the extra for your machine: "
        "`pip install kerakd[cpu]` or `pip install kerakd[gpu]`."
    ) from error

from kerakd import data, losses, methods, models, nn, taps  # noqa: E402
from kerakd.distiller import Distiller  # noqa: E402

__all__ = ["Distiller", "data", "losses", "methods", "models", "nn", "taps", "__version__"]
