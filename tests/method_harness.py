"""Checks every method's tests share (as keras-hub's `TestCase.run_*_test`).

- `run_config_round_trip(method)`: every constructor argument is in
  `get_config()` and survives `from_config`.
- `run_saving_round_trip(distiller, x, y, path)`: a trained Distiller saved to
  `.keras` and loaded in the same process predicts the same, taps the same
  layers, and computes the same loss terms on the next training batch (its
  random generators set to the same state first).
"""

import inspect

import keras
import numpy as np

from kerakd import compat


def run_config_round_trip(method):
    config = method.get_config()
    parameters = inspect.signature(type(method)).parameters
    arguments = {n for n, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    missing = arguments - set(config)
    assert not missing, f"{type(method).__name__}.get_config() lacks {sorted(missing)}"
    again = type(method).from_config(config)
    assert again.get_config() == config


def seed_generators(layer):
    """The random-seed generators of `layer` and of every layer inside it."""
    for sublayer in [layer, *compat.all_layers(layer)]:
        for value in vars(sublayer).values():
            if isinstance(value, keras.random.SeedGenerator):
                yield value


def run_saving_round_trip(distiller, x, y, path):
    distiller.save(path)
    restored = keras.models.load_model(path)
    assert type(restored.method) is type(distiller.method)
    assert restored.method.get_config() == distiller.method.get_config()
    images = x["images"] if isinstance(x, dict) else x
    np.testing.assert_allclose(restored.predict(images, verbose=0),
                               distiller.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    assert list(restored.student_features(images)) == list(distiller.student_features(images))
    assert list(restored.teacher_features(images)) == list(distiller.teacher_features(images))
    for model in (distiller, restored):
        for generator in seed_generators(model.method):
            generator.state.assign(np.array([7, 0]).astype(generator.state.dtype))
    expected = {k: float(v) for k, v in distiller.compute_loss_terms(x, y, training=True).items()}
    got = {k: float(v) for k, v in restored.compute_loss_terms(x, y, training=True).items()}
    assert list(got) == list(expected)
    np.testing.assert_allclose([got[k] for k in got], [expected[k] for k in got],
                               rtol=1e-5, atol=1e-6)
    return restored
