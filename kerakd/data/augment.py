"""The papers' augmentation and normalisation, as tf.data map functions.

Small images (CIFAR, Fashion-MNIST): pad 4 pixels of zeros, random crop back,
random horizontal flip. Large images (ImageNet): random resized crop (area
8%-100%, aspect ratio 3/4-4/3) and flip; evaluation resizes the shorter side
to 256/224 of the target and centre-crops. Two-view methods (MLKD) also get
a strong view: its own crop + flip, then RandAugment and Cutout on the
pixels (`kerakd.data.rand_augment`). Normalisation then maps pixels to
`(x / 255 - mean) / std` per channel. MixUp and CutMix mix whole batches and
turn labels into distributions (soft labels).
"""

import keras
import tensorflow as tf

from kerakd.data import rand_augment

PAD = 4
# Folded into an example's seed to draw its strong view (`strong_transform`).
STRONG_VIEW = 1
EVAL_RESIZE_RATIO = 256 / 224


def normalize(image, info):
    """Pixels `uint8` -> float32 `(x / 255 - mean) / std` per channel."""
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(info.mean)) / tf.constant(info.std)


def _resize(image, info):
    return tf.image.resize(image, info.image_shape[:2]) if info.resize else image


def crop_and_flip(info):
    """`(uint8 image, seed) -> pixels`: the random crop + flip of `train_transform`,
    before normalisation (values in `[0, 255]`).

    Args:
        info: the dataset's `DatasetInfo` (its `style` picks the recipe).

    Returns:
        `transform(image, seed)`, `seed` a shape-(2,) integer tensor.
    """
    height, width, channels = info.image_shape

    def crop_image(image, seed):
        if info.style == "small":
            image = tf.pad(_resize(image, info), [[PAD, PAD], [PAD, PAD], [0, 0]])
            return tf.image.stateless_random_crop(image, (height, width, channels), seed)
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seed,
            min_object_covered=0.0,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        return tf.image.resize(tf.slice(image, begin, size), (height, width))

    def transform(image, seed):
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        return tf.image.stateless_random_flip_left_right(crop_image(image, crop_seed), flip_seed)

    return transform


def train_transform(info):
    """`(uint8 image, seed) -> float32 image`: random crop + flip, then normalisation.

    The randomness is stateless: the same `seed` gives the same crop and flip
    in any process, so a pipeline can make an epoch's augmentation a function
    of its seed alone (what lets a killed run resume exactly).

    Args:
        info: the dataset's `DatasetInfo` (its `style` picks the recipe).

    Returns:
        `transform(image, seed)`, `seed` a shape-(2,) integer tensor.
    """
    crop_flip = crop_and_flip(info)

    def transform(image, seed):
        return normalize(crop_flip(image, seed), info)

    return transform


def strong_transform(info):
    """`(uint8 image, seed) -> float32 image`: the strong view of two-view methods.

    Its own random crop + flip (as `train_transform`'s, with other draws),
    then `rand_augment.rand_augment` (2 ops) and `rand_augment.cutout` on the
    pixels, then normalisation. The draws come from `seed` folded with
    `STRONG_VIEW`, so the weak view of the same example (`train_transform`
    with `seed` itself) is drawn independently and stays what a one-view
    pipeline gives.

    Args:
        info: the dataset's `DatasetInfo`.

    Returns:
        `transform(image, seed)`, `seed` a shape-(2,) integer tensor.
    """
    crop_flip = crop_and_flip(info)

    def transform(image, seed):
        seed = tf.random.experimental.stateless_fold_in(seed, STRONG_VIEW)
        crop_seed, augment_seed, cutout_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3))
        pixels = rand_augment.rand_augment(crop_flip(image, crop_seed), augment_seed)
        return normalize(rand_augment.cutout(pixels, cutout_seed), info)

    return transform


def eval_transform(info):
    """`uint8 image -> float32 image` for validation: resize/centre crop, normalise."""
    height, width, _ = info.image_shape

    def transform(image):
        if info.style == "imagenet":
            shape = tf.cast(tf.shape(image)[:2], tf.float32)
            scale = EVAL_RESIZE_RATIO * max(height, width) / tf.reduce_min(shape)
            image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32))
            image = tf.image.resize_with_crop_or_pad(image, height, width)
        else:
            image = _resize(image, info)
        return normalize(image, info)

    return transform


def batch_mix(kind, num_classes, alpha=1.0, seed=None):
    """`(images, int labels) -> (mixed images, soft labels)` for a batch.

    Unlike `train_transform`, the mixing draws from the layer's seed state,
    which restarts with each process: a resumed run mixes differently.

    Args:
        kind: `"mixup"` or `"cutmix"` (Keras core's `MixUp` / `CutMix`).
        num_classes: length of the soft labels.
        alpha: the Beta(alpha, alpha) parameter of the mixing ratio (1.0,
            the papers' CIFAR setting).
        seed: seed of the layer.
    """
    if kind == "mixup":
        layer = keras.layers.MixUp(alpha=alpha, seed=seed, dtype="float32")
    else:
        layer = keras.layers.CutMix(factor=alpha, seed=seed, dtype="float32")

    def mix(images, labels):
        mixed = layer(
            {"images": images, "labels": tf.one_hot(labels, num_classes)}, training=True
        )
        return mixed["images"], mixed["labels"]

    return mix
