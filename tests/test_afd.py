"""AFD (docs/methods/afd.md): loss against a NumPy re-implementation, attention, gradient
routing, heterogeneous pairs."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd
from reference import (
    IMAGE_SHAPE,
    NUM_CLASSES,
    f64,
    fixed_step,
    make_dataset,
    np_batch_norm,
    np_ce,
    np_dense,
    np_kd,
    np_normalize,
    np_resize,
    np_softmax,
)
from reference import randomize_trainable as randomize

BATCH = 8
QK_DIM = 16
# T = 2 teacher taps, S = 3 student taps: the 2x2 student map is repeated up,
# the 8x8 one pooled down.
TEACHER_SHAPES = [(BATCH, 8, 8, 6), (BATCH, 4, 4, 12)]
STUDENT_SHAPES = [(BATCH, 8, 8, 4), (BATCH, 4, 4, 8), (BATCH, 2, 2, 16)]


def np_afd(method, data, softmax_axis=2):
    """docs/methods/afd.md, written out: returns (loss terms, attention (B, T, S))."""
    student, teacher = f64(data.student["features"]), f64(data.teacher["features"])
    b, s_taps, t_taps, d = BATCH, len(student), len(teacher), QK_DIM

    def dense_bn(x, seq, relu):
        dense, bn = seq.layers[:2]
        y = np_batch_norm(np_dense(x, dense), bn)
        return np.maximum(y, 0.0) if relu else y

    query = np.stack(
        [dense_bn(f.mean(axis=(1, 2)), m, False) for f, m in zip(teacher, method.queries)], 1
    )
    key = np.stack(
        [dense_bn(f.mean(axis=(1, 2)), m, True) for f, m in zip(student, method.keys)], 1
    )
    # One BatchNorm over all B*S student keys.
    bilinear = dense_bn(key.reshape(b * s_taps, d), method.bilinear, False)
    bilinear = bilinear.reshape(b, s_taps, t_taps, d)
    p_t = np.float64(method.teacher_positions.numpy())
    p_s = np.float64(method.student_positions.numpy())
    logits = (np.einsum("bstq,btq->bts", bilinear, query) + p_t @ p_s.T) / math.sqrt(d)
    att = np_softmax(logits, axis=softmax_axis)

    def value(f, size):
        energy = np_resize((f**2).mean(axis=-1, keepdims=True), size)
        return np_normalize(energy.reshape(b, -1))

    afd = 0.0
    for t, f_t in enumerate(teacher):
        v_t = value(f_t, f_t.shape[1:3])
        distance = np.stack(
            [((value(f_s, f_t.shape[1:3]) - v_t) ** 2).mean(axis=-1) for f_s in student], 1
        )
        afd += (att[:, t] * distance).sum(axis=1).mean()
    logits_s, logits_t = np.float64(data.student_logits), np.float64(data.teacher_logits)
    terms = {"ce": np_ce(logits_s, data.labels), "kd": np_kd(logits_s, logits_t, 4.0),
             "afd": afd}
    return terms, att


def built_afd():
    spec, data = fixed_step(STUDENT_SHAPES, TEACHER_SHAPES)
    method = kerakd.methods.get("afd", qk_dim=QK_DIM)
    method.build(spec)
    randomize(method)
    return method, data


def test_loss_terms_match_numpy():
    method, data = built_afd()
    expected, att = np_afd(method, data)
    out = method(data=data, training=True)
    assert set(out.losses) == set(method.term_weights) == {"ce", "kd", "afd"}
    for name, value in expected.items():
        np.testing.assert_allclose(out.losses[name].numpy(), value, rtol=1e-5, err_msg=name)
    # The link matrix is this step's batch-mean attention, teacher x student.
    np.testing.assert_allclose(method.link_matrix.numpy(), att.mean(axis=0), rtol=1e-5)
    # The fixture tells the softmax axes apart: over teacher taps it differs.
    wrong_axis, _ = np_afd(method, data, softmax_axis=1)
    assert not np.isclose(out.losses["afd"].numpy(), wrong_axis["afd"], rtol=1e-3)


def test_default_weights_follow_the_spec():
    method = kerakd.methods.get("afd")
    assert method.term_weights == {"ce": 1.0, "kd": 0.9, "afd": 200.0}
    assert method.temperature == 4.0 and method.qk_dim == 128


def test_attention_rows_sum_to_one_over_student_taps():
    method, data = built_afd()
    att = method.attention(data.student["features"], data.teacher["features"], True).numpy()
    assert att.shape == (BATCH, len(TEACHER_SHAPES), len(STUDENT_SHAPES))
    np.testing.assert_allclose(att.sum(axis=-1), 1.0, rtol=1e-6)
    assert att.std(axis=0).max() > 1e-4, "attention should differ between examples"


def test_teacher_taps_get_no_gradient_and_attention_is_trained():
    method, data = built_afd()
    student = [tf.constant(f) for f in data.student["features"]]
    teacher = [tf.constant(f) for f in data.teacher["features"]]
    data.student, data.teacher = {"features": student}, {"features": teacher}
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(student + teacher)
        loss = method(data=data, training=True).losses["afd"]
    assert all(g is None for g in tape.gradient(loss, teacher))
    assert all(g is not None and np.any(g.numpy()) for g in tape.gradient(loss, student))
    gradients = tape.gradient(loss, method.trainable_variables)
    silent = [v.path for v, g in zip(method.trainable_variables, gradients)
              if g is None or not np.any(g.numpy())]
    assert not silent, "query, key, bilinear and positions are trained by L_AFD"


def test_heterogeneous_architectures_train():
    teacher = kerakd.models.get("resnet8x4", NUM_CLASSES, IMAGE_SHAPE)  # 3 block taps
    student = kerakd.models.get("wrn_16_1", NUM_CLASSES, IMAGE_SHAPE)  # 6 block taps
    distiller = kerakd.Distiller(student, "afd", teacher)
    distiller.compile(keras.optimizers.SGD(0.01, momentum=0.9))
    # Built (the method's parts, the optimizer's slots) before fit: variables
    # created while the step is traced make tf.function trace it a second time.
    distiller.build((8, *IMAGE_SHAPE))
    distiller.optimizer.build(distiller.trainable_variables)
    history = distiller.fit(make_dataset(n=16), epochs=1, verbose=0)
    for name in ("loss", "ce", "kd", "afd"):
        assert np.isfinite(history.history[name][-1]), name
    link = distiller.method.link_matrix.numpy()
    assert link.shape == (3, 6)
    np.testing.assert_allclose(link.sum(axis=-1), 1.0, rtol=1e-5)


def test_config_round_trip_and_validation():
    method = kerakd.methods.get("afd", afd_weight=50.0, qk_dim=64)
    config = method.get_config()
    assert config["afd_weight"] == 50.0 and config["qk_dim"] == 64
    assert type(method).from_config(config).term_weights == method.term_weights
    with pytest.raises(ValueError, match="qk_dim"):
        kerakd.methods.get("afd", qk_dim=0)
    with pytest.raises(ValueError, match="afd_weight"):
        kerakd.methods.get("afd", afd_weight=-1.0)
