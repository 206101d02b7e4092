"""Batches for training and validation, from a `Source`."""

import tensorflow as tf

from kerakd.data import augment as augment_lib
from kerakd.data.names import AUGMENTATIONS
from kerakd.data.sources import get_source

# What `views` may ask for: the one view of every method, or the weak and
# strong views of two-view methods (`Method.needs_strong_view`).
VIEWS = (("weak",), ("weak", "strong"))
# Examples held by the shuffle buffer: the whole training set when small.
SHUFFLE_BUFFER_SMALL = 60_000
SHUFFLE_BUFFER_LARGE = 10_000


def training_dataset(source, batch_size, augment="standard", with_index=False,
                     repeat=False, mix_alpha=1.0, seed=0, shuffle_files=True,
                     start_batch=0, views=("weak",)):
    """Shuffled, augmented, normalised training batches.

    The training set is read in passes; pass `p` is shuffled and augmented
    with seeds made from `(seed, p)` alone, and batches never straddle two
    passes (each pass drops its remainder), so every batch and every
    replica's share has the same size. Batch `k` of the endless dataset
    (`repeat=True`) is thus the same in every process: a run resumed at
    epoch `e` passes `start_batch=e * steps_per_epoch` and sees the batches an
    uninterrupted run sees.

    Args:
        source: a prepared `kerakd.data.sources.Source`.
        batch_size: examples per batch (the global batch under a strategy).
        augment: `"none"`, `"standard"` (the papers' crop + flip), `"mixup"` or
            `"cutmix"` (standard, then batch mixing: labels become soft).
        with_index: yield `({"images": x, "index": i}, y)` where `i` is each
            example's fixed position in the training set (methods with
            `needs_index`); else `(x, y)`.
        repeat: an endless dataset of passes (give `fit` a `steps_per_epoch`);
            otherwise one pass, reshuffled each time it is iterated.
        mix_alpha: Beta parameter of MixUp / CutMix.
        seed: seed of shuffling and augmentation.
        shuffle_files: lets a file-based source (tfds) read its files in a
            random order: better mixing, but that order is not a function of
            `seed`, so batches then differ between processes.
        start_batch: with `repeat`, the batch the dataset starts at.
        views: `("weak",)`, or `("weak", "strong")` for methods with
            `needs_strong_view`: then the images come as
            `{"images": weak, "strong_images": strong}` (with `"index"` too
            under `with_index`), the weak view as `augment` makes it and the
            strong one drawn independently (`augment.strong_transform`: its
            own crop + flip, RandAugment, Cutout). Not with mixup or cutmix.

    Returns:
        A `tf.data.Dataset`.

    Example:

    >>> from kerakd.data import get_source, training_dataset
    >>> source = get_source("synthetic").prepare()
    >>> train = training_dataset(source, batch_size=8, augment="mixup")
    >>> images, labels = next(iter(train))
    >>> tuple(images.shape), tuple(labels.shape)   # mixup: soft labels over the 4 classes
    ((8, 16, 16, 3), (8, 4))
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"Unknown augment '{augment}'; use one of {AUGMENTATIONS}.")
    if start_batch and not repeat:
        raise ValueError("`start_batch` positions an endless dataset: pass repeat=True.")
    views = tuple(views)
    if views not in VIEWS:
        raise ValueError(f"Unknown views {views}; use one of {VIEWS}.")
    strong = views == ("weak", "strong")
    if strong and augment in ("mixup", "cutmix"):
        raise ValueError(
            f"augment='{augment}' mixes the images of a batch, which a strong view "
            "would not follow; use augment='standard' or 'none' with views "
            "('weak', 'strong').")
    info = source.info
    if info.num_train is not None and info.num_train < batch_size:
        raise ValueError(
            f"Dataset '{info.name}' has {info.num_train} training examples, fewer "
            f"than one batch of {batch_size}: use a smaller batch size."
        )
    # Indices must name the same example every epoch: read files in order.
    examples = source.examples(training=True, shuffle_files=shuffle_files and not with_index)
    if with_index:
        examples = examples.enumerate().map(
            lambda i, example: (*example, tf.cast(i, tf.int32))
        )
    buffer = SHUFFLE_BUFFER_SMALL if info.style == "small" else SHUFFLE_BUFFER_LARGE
    buffer = min(buffer, info.num_train or buffer)
    # Examples a pass uses; unknown without the training-set size.
    per_pass = info.num_train and info.num_train // batch_size * batch_size

    def one_pass(number):
        """Pass `number`'s examples, shuffled, each led by its augmentation seed."""
        key = tf.stack([tf.constant(seed, tf.int64), number])
        shuffle_seed = tf.random.stateless_uniform(
            [], key, minval=None, maxval=None, dtype=tf.int64)
        # This function's own graph-level seed: the order then follows `seed`
        # alone, whatever the caller's global seed (and TF cannot combine a
        # global seed of 0 with a tensor op seed).
        tf.random.set_seed(1)
        shuffled = examples.shuffle(buffer, seed=shuffle_seed)
        if per_pass:
            shuffled = shuffled.take(per_pass)
        return shuffled.enumerate().map(
            lambda i, example: (tf.random.experimental.stateless_fold_in(key, i), *example)
        )

    if repeat:
        first_example = start_batch * batch_size
        if first_example and not per_pass:
            raise ValueError(
                f"Starting at batch {start_batch} needs the size of the training "
                f"set, which dataset '{info.name}' does not know."
            )
        first_pass, skipped = divmod(first_example, per_pass) if per_pass else (0, 0)
        dataset = tf.data.Dataset.counter(first_pass).flat_map(one_pass).skip(skipped)
    else:
        numbers = tf.data.Dataset.random(seed, rerandomize_each_iteration=True)
        dataset = numbers.take(1).flat_map(one_pass)
        if per_pass:
            # flat_map hides the length; Keras needs it to count epoch steps.
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(per_pass))
    if augment == "none":
        evaluate = augment_lib.eval_transform(info)

        def transform(image, example_seed):  # nothing random
            return evaluate(image)
    else:
        transform = augment_lib.train_transform(info)
    if strong:
        transform = _two_views(transform, augment_lib.strong_transform(info))
    dataset = dataset.map(
        lambda example_seed, image, *rest: (transform(image, example_seed), *rest),
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
            lambda images, labels, index: (
                {**(images if strong else {"images": images}), "index": index}, labels)
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _two_views(weak, strong):
    """`(image, seed) -> {"images": weak view, "strong_images": strong view}`."""

    def transform(image, example_seed):
        return {"images": weak(image, example_seed),
                "strong_images": strong(image, example_seed)}

    return transform


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
         with_index=False, seed=0, views=("weak",)):
    """Training and validation batches of a dataset, for `Distiller.fit`.

    Args:
        name: a dataset name (`kerakd.data.sources.get_source`).
        batch_size: examples per batch.
        augment: `"none"`, `"standard"`, `"mixup"` or `"cutmix"`.
        data_dir: Fashion-MNIST's IDX directory or tfds' data directory.
        image_size: side of the images a model reads (default: stored size).
        with_index: training batches carry example indices (`needs_index`).
        seed: seed of shuffling and augmentation.
        views: `("weak", "strong")` for two-view methods (`needs_strong_view`);
            see `training_dataset`.

    Returns:
        `(train_ds, val_ds, info)` with `info` a `DatasetInfo`.

    Example:

    >>> train_ds, val_ds, info = kerakd.data.load("synthetic", batch_size=8)
    >>> images, labels = next(iter(train_ds))
    >>> tuple(images.shape), labels.dtype.name, info.num_classes
    ((8, 16, 16, 3), 'int32', 4)
    >>> student = kerakd.models.get("resnet8", info.num_classes, info.image_shape)
    """
    source = get_source(name, data_dir, image_size).prepare()
    train = training_dataset(source, batch_size, augment, with_index, seed=seed, views=views)
    return train, validation_dataset(source, batch_size), source.info
