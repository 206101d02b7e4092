"""Batches for training and validation, from a `Source`."""

import tensorflow as tf

from kerakd.data import augment as augment_lib
from kerakd.data.sources import get_source

AUGMENTATIONS = ("none", "standard", "mixup", "cutmix")
# Examples held by the shuffle buffer: the whole training set when small.
SHUFFLE_BUFFER_SMALL = 60_000
SHUFFLE_BUFFER_LARGE = 10_000


def training_dataset(source, batch_size, augment="standard", with_index=False,
                     repeat=False, mix_alpha=1.0, seed=None):
    """Shuffled, augmented, normalised training batches.

    Batches drop the remainder, so every batch (and every replica's share)
    has the same size.

    Args:
        source: a prepared `kerakd.data.sources.Source`.
        batch_size: examples per batch (the global batch under a strategy).
        augment: `"none"`, `"standard"` (the papers' crop + flip), `"mixup"` or
            `"cutmix"` (standard, then batch mixing: labels become soft).
        with_index: yield `({"images": x, "index": i}, y)` where `i` is each
            example's fixed position in the training set (methods with
            `needs_index`); else `(x, y)`.
        repeat: repeat forever (for a fixed `steps_per_epoch`).
        mix_alpha: Beta parameter of MixUp / CutMix.
        seed: seed of shuffling and augmentation.

    Returns:
        A `tf.data.Dataset`.

    Example:

    >>> source = get_source("fashion_mnist").prepare()
    >>> train = training_dataset(source, batch_size=128, augment="mixup")
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"Unknown augment '{augment}'; use one of {AUGMENTATIONS}.")
    info = source.info
    # Indices must name the same example every epoch: read files in order.
    dataset = source.examples(training=True, shuffle_files=not with_index)
    if with_index:
        dataset = dataset.enumerate().map(
            lambda i, example: (*example, tf.cast(i, tf.int32))
        )
    buffer = SHUFFLE_BUFFER_SMALL if info.style == "small" else SHUFFLE_BUFFER_LARGE
    dataset = dataset.shuffle(min(buffer, info.num_train or buffer), seed=seed)
    if repeat:
        dataset = dataset.repeat()
    transform = (augment_lib.eval_transform(info) if augment == "none"
                 else augment_lib.train_transform(info, seed))
    dataset = dataset.map(
        lambda image, *rest: (transform(image), *rest),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if augment in ("mixup", "cutmix"):
        mix = augment_lib.batch_mix(augment, info.num_classes, mix_alpha, seed)
        dataset = dataset.map(
            lambda images, labels, *index: (*mix(images, labels), *index),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if with_index:
        dataset = dataset.map(
            lambda images, labels, index: ({"images": images, "index": index}, labels)
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def validation_dataset(source, batch_size):
    """Normalised validation batches `(images, int labels)`, keeping every example.

    Args:
        source: a prepared `Source`.
        batch_size: examples per batch (the last batch may be smaller).
    """
    transform = augment_lib.eval_transform(source.info)
    dataset = source.examples(training=False).map(
        lambda image, label: (transform(image), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def load(name, batch_size, augment="standard", data_dir=None, image_size=None,
         with_index=False, seed=None):
    """Training and validation batches of a dataset, for `Distiller.fit`.

    Args:
        name: a dataset name (`kerakd.data.sources.get_source`).
        batch_size: examples per batch.
        augment: `"none"`, `"standard"`, `"mixup"` or `"cutmix"`.
        data_dir: Fashion-MNIST's IDX directory or tfds' data directory.
        image_size: side of the images a model reads (default: stored size).
        with_index: training batches carry example indices (`needs_index`).
        seed: seed of shuffling and augmentation.

    Returns:
        `(train_ds, val_ds, info)` with `info` a `DatasetInfo`.

    Example:

    >>> train_ds, val_ds, info = kerakd.data.load("fashion_mnist", batch_size=128)
    >>> student = kerakd.models.get("resnet8", info.num_classes, info.image_shape)
    """
    source = get_source(name, data_dir, image_size).prepare()
    train = training_dataset(source, batch_size, augment, with_index, seed=seed)
    return train, validation_dataset(source, batch_size), source.info
