"""Shared fixtures: small generated data and tiny zoo models (fast on 2 CPU cores)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import kerakd  # noqa: E402

NUM_CLASSES = 5
IMAGE_SHAPE = (16, 16, 3)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


def make_images(n=8, shape=IMAGE_SHAPE, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def make_labels(n=8, num_classes=NUM_CLASSES, seed=0):
    return np.random.default_rng(seed + 1).integers(0, num_classes, size=n).astype("int32")


def make_dataset(n=32, batch_size=8, shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, seed=0):
    """A repeatable (images, int labels) dataset with drop_remainder batches."""
    ds = tf.data.Dataset.from_tensor_slices(
        (make_images(n, shape, seed), make_labels(n, num_classes, seed))
    )
    return ds.batch(batch_size, drop_remainder=True)


@pytest.fixture
def teacher():
    return kerakd.models.get("resnet8x4", NUM_CLASSES, IMAGE_SHAPE)


@pytest.fixture
def student():
    return kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
