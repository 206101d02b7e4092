"""Shared loss terms against NumPy re-implementations of docs/methods/conventions.md."""

import numpy as np
import pytest
import tensorflow as tf

from kerakd import losses
from reference import np_at_map, np_kd, np_log_softmax


rng = np.random.default_rng(0)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_matches_numpy(temperature):
    z_s = rng.normal(size=(6, 10)).astype("float32") * 3
    z_t = rng.normal(size=(6, 10)).astype("float32") * 3
    got = losses.kd_loss(z_s, z_t, temperature)
    np.testing.assert_allclose(got, np_kd(z_s, z_t, temperature), rtol=1e-5)


def test_kd_is_exact_for_confident_teacher():
    # A teacher probability of ~e^-60 must contribute 0*log0 = 0, not a
    # clipped 1e-7 as keras.losses.KLDivergence would.
    z_t = np.array([[60.0, 0.0, 0.0]], "float32")
    z_s = np.array([[0.0, 5.0, 0.0]], "float32")
    np.testing.assert_allclose(losses.kd_loss(z_s, z_t, 1.0), np_kd(z_s, z_t, 1.0), rtol=1e-5)


def test_kd_does_not_train_the_teacher():
    z_s = tf.Variable(rng.normal(size=(4, 5)).astype("float32"))
    z_t = tf.Variable(rng.normal(size=(4, 5)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = losses.kd_loss(z_s, z_t)
    g_s, g_t = tape.gradient(loss, [z_s, z_t])
    assert g_t is None and np.abs(g_s.numpy()).sum() > 0


def test_attention_map_and_at_loss_match_numpy():
    f_s = rng.normal(size=(3, 4, 5, 6)).astype("float32")
    f_t = rng.normal(size=(3, 4, 5, 8)).astype("float32")
    np.testing.assert_allclose(losses.attention_map(f_s), np_at_map(f_s), rtol=1e-5)
    expected = np.mean((np_at_map(f_s) - np_at_map(f_t)) ** 2)
    np.testing.assert_allclose(losses.at_loss(f_s, f_t), expected, rtol=1e-5)


def test_attention_map_of_zero_features_is_zero_not_nan():
    assert np.all(losses.attention_map(np.zeros((1, 2, 2, 3), "float32")).numpy() == 0)


def test_cross_entropy_int_and_soft_labels_agree():
    logits = rng.normal(size=(4, 5)).astype("float32")
    labels = np.array([0, 3, 2, 4])
    expected = -np.mean(np_log_softmax(logits)[np.arange(4), labels])
    np.testing.assert_allclose(losses.cross_entropy(labels, logits), expected, rtol=1e-5)
    one_hot = np.eye(5, dtype="float32")[labels]
    np.testing.assert_allclose(losses.cross_entropy(one_hot, logits), expected, rtol=1e-5)


def test_accuracy_reads_soft_labels_by_argmax():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]], "float32")
    soft = np.array([[0.7, 0.3], [0.6, 0.4], [0.9, 0.1]], "float32")
    np.testing.assert_allclose(losses.accuracy(soft, logits), 2 / 3, rtol=1e-6)
