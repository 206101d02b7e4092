"""`feature_ops.adaptive_average_pool`: its fast whole-ratio paths give
PyTorch's adaptive-pooling bins, as the general path does."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from kerakd.methods import feature_ops
from test_baselines import np_adaptive_pool


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
