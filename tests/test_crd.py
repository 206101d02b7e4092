"""CRD: the NCE term against a NumPy re-implementation of RepDistiller's
`ContrastMemory` + `ContrastLoss`, and the memory bank / queue updates."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd
from kerakd.methods import crd as crd_lib
from kerakd.methods.base import StepData, TapSpec

from reference import make_images, make_labels

B, K, S_DIM, T_DIM, FEAT = 8, 5, 6, 10, 4


def build(**kwargs):
    method = kerakd.methods.get("crd", feat_dim=FEAT, **kwargs)
    method.build(TapSpec(
        student={"features": [(B, S_DIM)]}, teacher={"features": [(B, T_DIM)]},
        student_logits=(B, K), teacher_logits=(B, K), image_shape=(B, 16, 16, 3),
    ))
    return method


def step(seed=0, index=None, f_s=None, f_t=None):
    rng = np.random.default_rng(seed)
    f_s = rng.normal(size=(B, S_DIM)).astype("float32") if f_s is None else f_s
    f_t = rng.normal(size=(B, T_DIM)).astype("float32") if f_t is None else f_t
    return StepData(
        images=None,
        labels=np.arange(B) % K,
        student={"features": [f_s]},
        student_logits=rng.normal(size=(B, K)).astype("float32"),
        teacher={"features": [f_t]},
        teacher_logits=rng.normal(size=(B, K)).astype("float32"),
        training=True,
        index=index,
    )


def np_embed(embed, f):
    w, b = (keras.ops.convert_to_numpy(v).astype("float64") for v in embed.dense.weights)
    v = f.astype("float64") @ w + b
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def np_contrast_loss(x, n_data, eps=1e-7):
    m = x.shape[1] - 1
    pn = 1 / n_data
    log_d1 = np.log(x[:, 0] / (x[:, 0] + m * pn + eps))
    log_d0 = np.log((m * pn) / (x[:, 1:] + m * pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]


def np_crd(method, data, rows_s, rows_t, n_data):
    """RepDistiller's CRD term on the first step (Z set from this batch).

    rows_s / rows_t: (B, 1 + K, D) memory rows each anchor is scored against
    (student anchors against teacher rows, and vice versa)."""
    v_s = np_embed(method.embed_student, data.student["features"][0])
    v_t = np_embed(method.embed_teacher, data.teacher["features"][0])
    out_s = np.exp(np.einsum("bkd,bd->bk", rows_s, v_s) / 0.07)
    out_t = np.exp(np.einsum("bkd,bd->bk", rows_t, v_t) / 0.07)
    out_s, out_t = out_s / (out_s.mean() * n_data), out_t / (out_t.mean() * n_data)
    return np_contrast_loss(out_s, n_data) + np_contrast_loss(out_t, n_data), v_s, v_t


def memory(variable):
    return keras.ops.convert_to_numpy(variable).astype("float64")


def test_nce_loss_matches_numpy():
    x = np.random.default_rng(0).uniform(1e-5, 1e-3, size=(B, 17)).astype("float32")
    expected = np_contrast_loss(x.astype("float64"), 1000)
    np.testing.assert_allclose(crd_lib.nce_loss(x, 1000), expected, rtol=1e-5)


def test_bank_term_matches_numpy_and_updates_exactly_the_batch_rows(monkeypatch):
    num_data, negatives = 50, 6
    method = build(num_data=num_data, negatives=negatives, momentum=0.5)
    drawn = np.random.default_rng(1).integers(0, num_data, size=(B, negatives)).astype("int32")
    monkeypatch.setattr(keras.random, "randint", lambda shape, *args, **kwargs: drawn)
    index = np.array([3, 7, 11, 0, 49, 20, 21, 8])
    data = step(index=index)
    bank_s, bank_t = memory(method.student_memory), memory(method.teacher_memory)

    out = method(data=data, training=True)

    rows = np.concatenate([index[:, None], drawn], axis=1)
    expected, v_s, v_t = np_crd(method, data, bank_t[rows], bank_s[rows], num_data)
    np.testing.assert_allclose(out.losses["crd"], expected, rtol=1e-5)
    for bank, new, v in ((bank_s, memory(method.student_memory), v_s),
                         (bank_t, memory(method.teacher_memory), v_t)):
        assert new.shape == (num_data, FEAT)
        untouched = np.setdiff1d(np.arange(num_data), index)
        np.testing.assert_array_equal(new[untouched], bank[untouched])
        updated = 0.5 * bank[index] + 0.5 * v
        updated /= np.linalg.norm(updated, axis=1, keepdims=True)
        np.testing.assert_allclose(new[index], updated, rtol=1e-5, atol=1e-6)
    # Z is fixed by the first step: a second call does not change it.
    z = keras.ops.convert_to_numpy(method.normalizers).copy()
    method(data=step(seed=1, index=index), training=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(method.normalizers), z)


def test_momentum_zero_stores_the_latest_embedding():
    method = build(num_data=20, negatives=3, momentum=0.0)
    index = np.arange(B) + 4
    data = step(index=index)
    method(data=data, training=True)
    np.testing.assert_allclose(
        memory(method.student_memory)[index],
        np_embed(method.embed_student, data.student["features"][0]), rtol=1e-5, atol=1e-6,
    )


def test_evaluation_calls_leave_the_bank_alone():
    method = build(num_data=20, negatives=3)
    before = memory(method.student_memory)
    method(data=step(index=np.arange(B)), training=False)
    np.testing.assert_array_equal(memory(method.student_memory), before)


def test_queue_term_matches_numpy_and_holds_the_last_embeddings():
    negatives = 12
    method = build(queue=True, negatives=negatives)
    assert not method.needs_index
    queue_s, queue_t = memory(method.student_memory), memory(method.teacher_memory)
    first = step(seed=0)
    out = method(data=first, training=True)

    v_s = np_embed(method.embed_student, first.student["features"][0])
    v_t = np_embed(method.embed_teacher, first.teacher["features"][0])
    # Positive: the other network's current embedding; negatives: the queue.
    rows_s = np.concatenate([v_t[:, None], np.broadcast_to(queue_t, (B, *queue_t.shape))], 1)
    rows_t = np.concatenate([v_s[:, None], np.broadcast_to(queue_s, (B, *queue_s.shape))], 1)
    expected, _, _ = np_crd(method, first, rows_s, rows_t, negatives)
    np.testing.assert_allclose(out.losses["crd"], expected, rtol=1e-5)

    second = step(seed=1)
    method(data=second, training=True)
    w_s = np_embed(method.embed_student, second.student["features"][0])
    new = memory(method.student_memory)
    assert new.shape == (negatives, FEAT)
    # Latest batch first, then the first batch's first 4 (the oldest drop out).
    np.testing.assert_allclose(new, np.concatenate([w_s, v_s[:4]]), rtol=1e-5, atol=1e-6)


def test_gradients_reach_student_and_both_embed_heads_never_teacher():
    method = build(queue=True, negatives=16)
    f_s = tf.Variable(np.random.default_rng(0).normal(size=(B, S_DIM)).astype("float32"))
    f_t = tf.Variable(np.random.default_rng(1).normal(size=(B, T_DIM)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = method(data=step(f_s=f_s, f_t=f_t), training=True).losses["crd"]
    g_s, g_t, *g_heads = tape.gradient(loss, [f_s, f_t, *method.trainable_variables])
    assert g_t is None and np.abs(g_s.numpy()).sum() > 0
    assert len(g_heads) == 4 and all(np.abs(g.numpy()).sum() > 0 for g in g_heads)
    assert {v.name for v in method.non_trainable_variables} >= {
        "student_memory", "teacher_memory", "normalizers"
    }


def test_bank_needs_num_data_and_indices():
    assert kerakd.methods.get("crd").needs_index
    with pytest.raises(ValueError, match="num_data"):
        build()
    method = build(num_data=20, negatives=3)
    with pytest.raises(ValueError, match="index of each example"):
        method(data=step(index=None), training=True)


def test_distiller_refuses_batches_without_indices(student, teacher):
    method = kerakd.methods.get("crd", num_data=20, negatives=4, feat_dim=8)
    distiller = kerakd.Distiller(student, method, teacher)
    distiller.compile(keras.optimizers.SGD(0.01))
    plain = tf.data.Dataset.from_tensor_slices((make_images(8), make_labels(8))).batch(8)
    with pytest.raises(ValueError, match=r"\{'images': x, 'index': i\}"):
        distiller.fit(plain, epochs=1, verbose=0)


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="momentum"):
        kerakd.methods.get("crd", momentum=1.0)
    with pytest.raises(ValueError, match="negatives"):
        kerakd.methods.get("crd", negatives=0)


def test_distiller_trains_with_indexed_batches_and_fills_the_bank(student, teacher):
    n, num_data = 16, 20
    ds = tf.data.Dataset.from_tensor_slices(
        ({"images": make_images(n), "index": np.arange(n)}, make_labels(n))
    ).batch(8, drop_remainder=True)
    method = kerakd.methods.get("crd", num_data=num_data, negatives=32, feat_dim=8)
    distiller = kerakd.Distiller(student, method, teacher)
    distiller.compile(keras.optimizers.SGD(0.01))
    distiller.build((8, *make_images(1).shape[1:]))
    before = memory(method.teacher_memory)
    history = distiller.fit(ds, epochs=1, verbose=0).history
    assert {"ce", "kd", "crd", "loss"} <= set(history)
    after = memory(method.teacher_memory)
    assert np.all(np.any(after[:n] != before[:n], axis=1))
    np.testing.assert_array_equal(after[n:], before[n:])
