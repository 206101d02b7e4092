"""`l2_normalize`'s writings reproduce, bit for bit, the formulas the methods
were benchmarked with before it became their one home: `keras.ops.normalize`
(SemCKD, AFD's values, `epsilon_on="inverse_norm"`) and the attention maps'
`e / max(sqrt(sum e * e), 1e-12)` (AT, FRSKD, AFD, `square="product"`), in
values and gradients, eagerly and in a `tf.function`."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from kerakd.methods.feature_ops import l2_normalize


def keras_normalize(x):
    return ops.normalize(x, epsilon=1e-12)


def attention_map_formula(x):
    norm = ops.sqrt(ops.sum(x * x, axis=-1, keepdims=True))
    return x / ops.maximum(norm, 1e-12)


def value_and_gradient(fn, x, graph):
    def run(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = fn(v)
            # A fixed, uneven weighting: every output's gradient counts.
            weights = tf.cast(tf.reshape(tf.range(tf.size(y)) % 7 - 3, tf.shape(y)), y.dtype)
            total = tf.reduce_sum(y * weights)
        return y, tape.gradient(total, v)

    y, gradient = (tf.function(run) if graph else run)(tf.constant(x))
    return y.numpy(), gradient.numpy()


def features(seed=0):
    x = np.random.default_rng(seed).normal(size=(16, 48)).astype("float32")
    x[1] *= 1e-3  # a small row, so that the squares are far from 1
    return x


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("form, reference", [
    ({"epsilon_on": "inverse_norm"}, keras_normalize),
    ({"epsilon_on": "norm", "square": "product"}, attention_map_formula),
])
def test_a_writing_is_its_former_formula_bit_for_bit(form, reference, graph):
    x = features()
    ours = value_and_gradient(lambda v: l2_normalize(v, **form), x, graph)
    theirs = value_and_gradient(reference, x, graph)
    for actual, expected in zip(ours, theirs):
        assert actual.tobytes() == expected.tobytes()


def test_the_writings_differ_only_in_the_last_bits():
    x = features()
    writings = [{}, {"epsilon_on": "norm"}, {"epsilon_on": "inverse_norm"},
                {"epsilon_on": "norm", "square": "product"}]
    values = [np.asarray(l2_normalize(x, **w)) for w in writings]
    for value in values[1:]:
        np.testing.assert_allclose(value, values[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(values[0], axis=-1), 1.0, rtol=1e-6)


def test_unknown_writings_are_refused():
    x = features()
    with pytest.raises(ValueError, match="inverse_norm"):
        l2_normalize(x, epsilon_on="sum")
    with pytest.raises(ValueError, match="square"):
        l2_normalize(x, square="cube")
