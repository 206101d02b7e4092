"""Input pipelines: datasets by name, the papers' augmentation, normalisation.

>>> train_ds, val_ds, info = kerakd.data.load("fashion_mnist", batch_size=128)
>>> distiller.fit(train_ds, validation_data=val_ds, epochs=10)

See `kerakd.data.sources` for the dataset names, `kerakd.data.augment` for
the augmentation and `kerakd.data.pipeline` for batching.
"""

from kerakd.data.pipeline import (  # noqa: F401
    AUGMENTATIONS,
    load,
    training_dataset,
    validation_dataset,
)
from kerakd.data.sources import DatasetInfo, Source, get_source  # noqa: F401
