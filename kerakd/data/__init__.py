"""Input pipelines: datasets by name, the papers' augmentation, normalisation.

Example (`"synthetic"`: small generated images, no download):

>>> train_ds, val_ds, info = kerakd.data.load("synthetic", batch_size=8)
>>> info.num_classes, info.image_shape
(4, (16, 16, 3))
>>> student = kerakd.models.get("resnet8", info.num_classes, info.image_shape)
>>> distiller = kerakd.Distiller(student, "none")
>>> distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))
>>> history = distiller.fit(train_ds, validation_data=val_ds, epochs=1, steps_per_epoch=1,
...                         validation_steps=1, verbose=0)
>>> sorted(history.history)
['accuracy', 'ce', 'loss', 'val_accuracy', 'val_ce', 'val_loss']

See `kerakd.data.sources` for the dataset names, `kerakd.data.augment` for
the augmentation and `kerakd.data.pipeline` for batching.
"""

import importlib

from kerakd.data.names import AUGMENTATIONS  # noqa: F401  (no TensorFlow)

# Loaded on first use, so that `kerakd.data.names` imports without TensorFlow
# (`kerakd-train` checks its flags with it before TensorFlow loads).
_LAZY = {
    "load": "kerakd.data.pipeline",
    "training_dataset": "kerakd.data.pipeline",
    "validation_dataset": "kerakd.data.pipeline",
    "DatasetInfo": "kerakd.data.sources",
    "Source": "kerakd.data.sources",
    "get_source": "kerakd.data.sources",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'kerakd.data' has no attribute '{name}'")
    return getattr(importlib.import_module(_LAZY[name]), name)


def __dir__():
    return sorted([*globals(), *_LAZY])
