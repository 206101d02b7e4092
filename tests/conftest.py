"""Shared fixtures: the random seed and tiny zoo models (fast on 2 CPU cores).

The data builders live in tests/reference.py, which test modules import; the
names stay importable from here for the modules not moved yet."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402

import kerakd  # noqa: E402
from reference import (  # noqa: E402,F401
    IMAGE_SHAPE, NUM_CLASSES, make_dataset, make_images, make_labels)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture
def teacher():
    return kerakd.models.get("resnet8x4", NUM_CLASSES, IMAGE_SHAPE)


@pytest.fixture
def student():
    return kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
