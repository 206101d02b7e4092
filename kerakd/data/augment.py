"""The papers' augmentation and normalisation, as tf.data map functions.

Small images (CIFAR, Fashion-MNIST): pad 4 pixels of zeros, random crop back,
random horizontal flip. Large images (ImageNet): random resized crop (area
8%-100%, aspect ratio 3/4-4/3) and flip; evaluation resizes the shorter side
to 256/224 of the target and centre-crops. Normalisation then maps pixels to
`(x / 255 - mean) / std` per channel. MixUp and CutMix mix whole batches and
turn labels into distributions (soft labels).
"""

import keras
import tensorflow as tf

PAD = 4
EVAL_RESIZE_RATIO = 256 / 224


def normalize(image, info):
    """Pixels `uint8` -> float32 `(x / 255 - mean) / std` per channel."""
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(info.mean)) / tf.constant(info.std)


def _resize(image, info):
    return tf.image.resize(image, info.image_shape[:2]) if info.resize else image


def train_transform(info, seed=None):
    """`uint8 image -> float32 image`: random crop + flip, then normalisation.

    Args:
        info: the dataset's `DatasetInfo` (its `style` picks the recipe).
        seed: seed of the random layers.
    """
    height, width, _ = info.image_shape
    # float32 whatever the global mixed-precision policy: inputs stay exact.
    flip = keras.layers.RandomFlip("horizontal", seed=seed, dtype="float32")
    if info.style == "small":
        crop = keras.layers.RandomCrop(height, width, seed=seed, dtype="float32")

        def crop_image(image):
            image = tf.pad(_resize(image, info), [[PAD, PAD], [PAD, PAD], [0, 0]])
            return crop(image, training=True)
    else:

        def crop_image(image):
            begin, size, _ = tf.image.sample_distorted_bounding_box(
                tf.shape(image),
                bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
                min_object_covered=0.0,
                aspect_ratio_range=(3 / 4, 4 / 3),
                area_range=(0.08, 1.0),
                max_attempts=10,
                use_image_if_no_bounding_boxes=True,
                seed=seed,
            )
            return tf.image.resize(tf.slice(image, begin, size), (height, width))

    def transform(image):
        image = flip(crop_image(image), training=True)
        return normalize(image, info)

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
