"""`feature_ops`: the fast whole-ratio paths of `adaptive_average_pool` give
PyTorch's adaptive-pooling bins, as the general path does; `l2_normalize` and
`cosine_similarity_matrix` with the floor on the norm are `F.normalize` and
its cosines bit for bit."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from kerakd import losses
from kerakd.methods import feature_ops
from reference import np_adaptive_pool


def general_path(x, size):
    x = ops.cast(x, "float32")
    return ops.einsum("ph,bhwc,qw->bpqc", feature_ops._bin_averages(x.shape[1], size[0]), x,
                      feature_ops._bin_averages(x.shape[2], size[1]))


@pytest.mark.parametrize("shape, size", [
    ((2, 32, 32, 3), (8, 8)),    # whole ratio down: average pooling
    ((2, 8, 4, 3), (4, 1)),      # different ratios per axis
    ((2, 4, 4, 3), (8, 8)),      # whole ratio up: repeated cells (AFD)
    ((2, 2, 3, 1), (4, 9)),
    ((2, 7, 2, 1), (3, 4)),      # neither: the general path
])
def test_every_path_follows_pytorch_bins(shape, size):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    variable = tf.Variable(x)
    with tf.GradientTape() as tape:
        pooled = feature_ops.adaptive_average_pool(variable, size)
        weighted = tf.reduce_sum(pooled * np.arange(pooled.shape[-1], dtype="float32"))
    np.testing.assert_allclose(pooled, np_adaptive_pool(x.astype("float64"), size), rtol=1e-5,
                               atol=1e-6)
    with tf.GradientTape() as reference_tape:
        reference = general_path(variable, size)
        reference_weighted = tf.reduce_sum(reference * np.arange(reference.shape[-1],
                                                                 dtype="float32"))
    np.testing.assert_allclose(tape.gradient(weighted, variable),
                               reference_tape.gradient(reference_weighted, variable),
                               rtol=1e-5, atol=1e-7)


def value_and_gradients(fn, *inputs):
    """`fn(*inputs)` and the gradients of a fixed weighting of it, computed in
    a `tf.function` as a training step computes them."""

    @tf.function
    def run(*xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            y = fn(*xs)
            weights = tf.cast(tf.reshape(tf.range(tf.size(y)) % 7 - 3, tf.shape(y)), y.dtype)
            total = tf.reduce_sum(y * weights)
        return y, tape.gradient(total, xs)

    y, gradients = run(*[tf.constant(x) for x in inputs])
    return [y.numpy()] + [g.numpy() for g in gradients]


def divided_by_clamped_norm(x, epsilon=1e-12):
    """`x / max(||x||, epsilon)`, as `F.normalize` (and AID, before it used
    `feature_ops`) writes it."""
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return x / ops.maximum(norm, epsilon)


def features(*shape, seed=0):
    x = np.random.default_rng(seed).normal(size=shape).astype("float32")
    x[0] = 0.0  # a zero vector: the epsilon floor
    return x


@pytest.mark.parametrize("shape", [(16, 64), (4, 5, 3)])
def test_l2_normalize_with_epsilon_on_the_norm_is_f_normalize_bit_for_bit(shape):
    x = features(*shape)
    ours = value_and_gradients(
        lambda v: feature_ops.l2_normalize(v, epsilon_on="norm"), x)
    for actual, expected in zip(ours, value_and_gradients(divided_by_clamped_norm, x)):
        np.testing.assert_array_equal(actual, expected)


def test_both_floors_give_the_same_values_and_zero_for_a_zero_vector():
    x = features(16, 64)
    squares = np.asarray(feature_ops.l2_normalize(x))
    norm = np.asarray(feature_ops.l2_normalize(x, epsilon_on="norm"))
    np.testing.assert_allclose(squares, norm, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(squares[0], 0.0)
    np.testing.assert_array_equal(norm[0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(squares[1:], axis=-1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="epsilon_on"):
        feature_ops.l2_normalize(x, epsilon_on="sum")


def test_cosine_matrix_of_rows_and_columns_is_unit_rows_times_unit_columns():
    rows, columns = features(8, 32), features(6, 32, seed=1)

    def reference(a, b):
        return ops.matmul(divided_by_clamped_norm(a), ops.transpose(divided_by_clamped_norm(b)))

    ours = value_and_gradients(
        lambda a, b: feature_ops.cosine_similarity_matrix(a, b, epsilon_on="norm"), rows, columns)
    for actual, expected in zip(ours, value_and_gradients(reference, rows, columns)):
        np.testing.assert_array_equal(actual, expected)
    np.testing.assert_array_equal(feature_ops.cosine_similarity_matrix(rows),
                                  feature_ops.cosine_similarity_matrix(rows, rows))


def test_attention_map_normalises_to_the_same_values():
    # attention_map is l2_normalize(mean_c f^2) with the epsilon on the norm;
    # the squares-as-products form it computes gives the same forward values.
    f = np.abs(features(4, 8, 8, 16))
    energy = ops.reshape(ops.mean(f * f, axis=-1), (4, -1))
    np.testing.assert_array_equal(losses.attention_map(f),
                                  feature_ops.l2_normalize(energy, epsilon_on="norm"))
