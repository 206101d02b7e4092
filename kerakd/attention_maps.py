"""Attention maps of fixed images as TensorBoard images, once per epoch.

Shows where networks look (FRSKD's Fig. 3: the classifier's attention next to
its self-teacher's refined attention). Each feature map `f` is drawn as its
attention `mean_c f^2`, l2-normalised like the AT term, scaled to [0, 1] per
image and up-sampled (nearest) to the input size.
"""

import os

import numpy as np
import tensorflow as tf
from keras import callbacks
from keras import ops

from kerakd import losses


class AttentionMapImages(callbacks.Callback):
    """Writes attention maps of a few fixed images to TensorBoard every epoch.

    Images go to `<log_dir>/attention_maps` under the tags `input` (written
    once, at the start of training) and `<group>/<map name>` (every epoch,
    step = epoch).

    Args:
        log_dir: the run's TensorBoard directory.
        images: a NumPy batch `(N, H, W, C)` of fixed validation images.
        feature_maps: `(distiller, images) -> {group: {map name: (N, h, w, c)}}`,
            the maps to draw (e.g. `{"classifier": {...}, "self_teacher": {...}}`);
            called with the callback's model, the `Distiller`.
        max_images: number of images of `images` to draw (default 4).

    Example:

    >>> import os
    >>> from kerakd.attention_maps import AttentionMapImages
    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> distiller = kerakd.Distiller(student, "none")
    >>> distiller.compile(keras.optimizers.SGD(0.05))
    >>> images = np.random.rand(8, 16, 16, 3).astype("float32")
    >>> stages = kerakd.taps.tap_model(student, ["stage1", "stage3"])
    >>> def maps(distiller, images):
    ...     stage1, stage3, _ = stages(images, training=False)
    ...     return {"classifier": {"stage1": stage1, "stage3": stage3}}
    >>> callback = AttentionMapImages("logs", images, maps)
    >>> _ = distiller.fit(images, np.arange(8), epochs=1, verbose=0, callbacks=[callback])
    >>> os.listdir("logs/attention_maps")   # tags input, classifier/stage1, classifier/stage3
    ['events.out.tfevents...']
    """

    def __init__(self, log_dir, images, feature_maps, max_images=4):
        super().__init__()
        images = np.asarray(images)
        if images.ndim != 4 or not len(images):
            raise ValueError(
                f"AttentionMapImages draws a batch of images (N, H, W, C); got "
                f"an array of shape {images.shape}."
            )
        if max_images < 1:
            raise ValueError(f"`max_images` must be >= 1, got {max_images}.")
        self.log_dir = os.path.join(log_dir, "attention_maps")
        self.images = images[:max_images].astype("float32")
        self.feature_maps = feature_maps
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            tf.summary.image(
                "input", _to_unit_range(self.images), step=0,
                max_outputs=len(self.images),
            )

    def on_epoch_end(self, epoch, logs=None):
        groups = self.feature_maps(self.model, self.images)
        size = self.images.shape[1:3]
        with self._writer.as_default():
            for group, maps in groups.items():
                for name, features in maps.items():
                    tf.summary.image(
                        f"{group}/{name}", attention_image(features, size),
                        step=epoch, max_outputs=len(self.images),
                    )
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def attention_image(features, size):
    """`(N, h, w, c)` features -> `(N, H, W, 1)` attention images in [0, 1].

    Args:
        features: a batch of feature maps.
        size: `(H, W)`, the size to up-sample to (nearest neighbour).
    """
    h, w = features.shape[1:3]
    maps = ops.reshape(losses.attention_map(features), (-1, h, w, 1))
    maps = maps / ops.maximum(ops.max(maps, axis=(1, 2, 3), keepdims=True), 1e-12)
    return ops.image.resize(maps, tuple(size), interpolation="nearest")


def _to_unit_range(images):
    """Min-max scales each (normalised) image to [0, 1] for display."""
    low = images.min(axis=(1, 2, 3), keepdims=True)
    high = images.max(axis=(1, 2, 3), keepdims=True)
    return (images - low) / np.maximum(high - low, 1e-12)
