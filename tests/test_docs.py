"""Code in the docs runs as written."""

import os
import re

import keras
import numpy as np

import kerakd

DOCS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs")


def test_writing_a_method_example_registers_and_trains():
    text = open(os.path.join(DOCS, "writing_a_method.md")).read()
    exec(re.search(r"```python\n(.*?)```", text, re.S).group(1), {})
    student = kerakd.models.get("resnet8", 5, (16, 16, 3))
    teacher = kerakd.models.get("resnet8x4", 5, (16, 16, 3))
    distiller = kerakd.Distiller(student, kerakd.methods.get("hint_cosine"), teacher)
    distiller.compile(keras.optimizers.SGD(0.01))
    rng = np.random.default_rng(0)
    logs = distiller.fit(rng.random((16, 16, 16, 3), "float32"), rng.integers(0, 5, 16),
                         batch_size=8, verbose=0).history
    assert {"ce", "hint", "loss", "accuracy"} <= set(logs)
    assert 0 <= logs["hint"][0] <= 2
    # Without a get_config of its own, its arguments survive a config round trip.
    config = kerakd.methods.get("hint_cosine", hint_weight=2.0).get_config()
    assert config["hint_weight"] == 2.0 and config["ce_weight"] == 1.0
    assert type(distiller.method).from_config(config).get_config() == config
