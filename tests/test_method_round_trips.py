"""Every registered method survives `get_config` and a `.keras` round trip of
a trained Distiller: equal predictions, taps and next-step terms."""

import keras
import numpy as np
import pytest

import kerakd
from method_harness import run_config_round_trip, run_saving_round_trip

SHAPE, BATCH, CLASSES = (16, 16, 3), 8, 5
REQUIRED = {"crd": {"num_data": BATCH}}


# A composition too: loading builds its components from their own saved
# configs before the composition's build runs.
COMPOSITIONS = ["fitnet+crd"]


def method_of(name):
    if "+" in name:
        return kerakd.methods.get(name, **{n: REQUIRED[n] for n in name.split("+") if n in REQUIRED})
    return kerakd.methods.get(name, **REQUIRED.get(name, {}))


def batch():
    rng = np.random.default_rng(0)
    x = {"images": rng.normal(size=(BATCH, *SHAPE)).astype("float32"),
         "index": np.arange(BATCH, dtype="int64"),
         # Its own generator: the other arrays stay what they were.
         "strong_images": np.random.default_rng(1).normal(
             size=(BATCH, *SHAPE)).astype("float32")}
    return x, rng.integers(0, CLASSES, BATCH).astype("int32")


@pytest.mark.parametrize("name", [*kerakd.methods.available(), *COMPOSITIONS])
def test_config_round_trip_keeps_every_argument(name):
    run_config_round_trip(method_of(name))


@pytest.mark.parametrize("name", [*kerakd.methods.available(), *COMPOSITIONS])
def test_trained_distiller_round_trips_through_a_keras_file(name, tmp_path):
    method = method_of(name)
    student = kerakd.models.get("resnet8", CLASSES, SHAPE)
    teacher = kerakd.models.get("wrn_16_1", CLASSES, SHAPE) if method.requires_teacher else None
    distiller = kerakd.Distiller(student, method, teacher)
    distiller.compile(keras.optimizers.SGD(0.01, momentum=0.9), run_eagerly=True)
    x, y = batch()
    keys = ["images", *(["index"] if method.needs_index else []),
            *(["strong_images"] if method.needs_strong_view else [])]
    data = {k: x[k] for k in keys} if len(keys) > 1 else x["images"]
    distiller.fit(data, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    run_saving_round_trip(distiller, x, y, tmp_path / f"{name}.keras")
