"""Shared fixtures: the random seed and tiny zoo models (fast on 2 CPU cores).

The data builders live in tests/reference.py, which test modules import; the
names stay importable from here for the modules not moved yet."""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402

import kerakd  # noqa: E402
from reference import (  # noqa: E402,F401
    IMAGE_SHAPE, NUM_CLASSES, make_dataset, make_images, make_labels)

# What importing TensorFlow and Keras made (~320,000 objects) lives as long as
# the process: out of the garbage collector's walks from here on.
gc.freeze()


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    # Keras' global state (layer names, the dtype policy) is reset for the next
    # test; the full garbage collection `clear_session` would add (0.1-0.5 s
    # a test, ~1,200 tests) is left to Python's own collector.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture
def teacher():
    return kerakd.models.get("resnet8x4", NUM_CLASSES, IMAGE_SHAPE)


@pytest.fixture
def student():
    return kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
