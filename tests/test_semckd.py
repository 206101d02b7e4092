"""SemCKD (docs/methods/semckd.md): loss against a NumPy re-implementation, attention,
gradient routing, heterogeneous pairs, the batch-size contract."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd
from kerakd.methods.feature_ops import adaptive_average_pool
from reference import (
    IMAGE_SHAPE,
    NUM_CLASSES,
    f64,
    fixed_step,
    make_dataset,
    make_images,
    make_labels,
    np_batch_norm,
    np_ce,
    np_dense,
    np_kd,
    np_normalize,
    np_resize,
    np_softmax,
)
from reference import randomize_trainable as randomize

# -- NumPy reference (float64) ------------------------------------------------


def np_conv_same(x, kernel):
    """Stride-1 convolution with zero padding k // 2 on every side."""
    kernel = np.float64(kernel)
    kh, kw = kernel.shape[:2]
    _, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    return sum(
        np.einsum("bhwc,cd->bhwd", padded[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
        for dy in range(kh)
        for dx in range(kw)
    )


# -- fixed inputs ---------------------------------------------------------------

BATCH = 8
# Different tap counts, channels and sizes: pairs are pooled on either side.
STUDENT_SHAPES = [(BATCH, 8, 8, 4), (BATCH, 4, 4, 8)]
TEACHER_SHAPES = [(BATCH, 8, 8, 6), (BATCH, 4, 4, 12), (BATCH, 2, 2, 16)]


# -- SemCKD reference -----------------------------------------------------------


def np_semckd(method, data, tau, softmax_axis=2):
    """docs/methods/semckd.md, written out: returns (loss terms, sm_score, attention)."""
    student, teacher = f64(data.student["features"]), f64(data.teacher["features"])
    b, s_taps, t_taps = BATCH, len(student), len(teacher)

    def gram(f):
        r = f.reshape(b, -1)
        return r @ r.T

    def mlp(x, seq):
        hidden, out = seq.layers
        return np_normalize(np_dense(np.maximum(np_dense(x, hidden), 0.0), out))

    grams_s, grams_t = [gram(f) for f in student], [gram(f) for f in teacher]
    query = np.stack([mlp(g, m) for g, m in zip(grams_s, method.queries)], axis=1)
    key = np.stack([mlp(g, m) for g, m in zip(grams_t, method.keys)], axis=1)
    att = np_softmax(np.einsum("bsd,btd->bst", query, key) / tau, axis=softmax_axis)

    d = np.zeros((b, s_taps, t_taps))
    gram_mse = np.zeros((b, s_taps, t_taps))
    for i, f_s in enumerate(student):
        for j, f_t in enumerate(teacher):
            if f_s.shape[1] > f_t.shape[1]:
                f_s = np_resize(f_s, f_t.shape[1:3])
            else:
                f_t = np_resize(f_t, f_s.shape[1:3])
            conv1, bn1, _, conv2, bn2, _, conv3 = method.projectors[i * t_taps + j].layers
            x = np.maximum(np_batch_norm(np_conv_same(f_s, conv1.kernel.numpy()), bn1), 0)
            x = np.maximum(np_batch_norm(np_conv_same(x, conv2.kernel.numpy()), bn2), 0)
            x = np_conv_same(x, conv3.kernel.numpy())
            d[:, i, j] = ((x - f_t) ** 2).reshape(b, -1).mean(axis=1)
            gram_mse[:, i, j] = ((grams_s[i] - grams_t[j]) ** 2).mean(axis=1)
    logits_s, logits_t = np.float64(data.student_logits), np.float64(data.teacher_logits)
    terms = {
        "ce": np_ce(logits_s, data.labels),
        "kd": np_kd(logits_s, logits_t, 4.0),
        "semckd": (att * d).sum() / (b * s_taps),
    }
    return terms, (att * gram_mse).sum() / (b * s_taps), att


def built_semckd(tau=1.0, student_shapes=STUDENT_SHAPES, teacher_shapes=TEACHER_SHAPES):
    spec, data = fixed_step(student_shapes, teacher_shapes)
    method = kerakd.methods.get("semckd", tau=tau)
    method.build(spec)
    randomize(method)
    return method, data


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_loss_terms_and_sm_score_match_numpy(tau):
    method, data = built_semckd(tau)
    expected, sm_score, att = np_semckd(method, data, tau)
    out = method(data=data, training=True)
    assert set(out.losses) == set(method.term_weights) == {"ce", "kd", "semckd"}
    for name, value in expected.items():
        np.testing.assert_allclose(out.losses[name].numpy(), value, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(out.metrics["sm_score"].numpy(), sm_score, rtol=1e-5)
    # The link matrix is this step's batch-mean attention, student x teacher.
    np.testing.assert_allclose(method.link_matrix.numpy(), att.mean(axis=0), rtol=1e-5)
    # The fixture tells the softmax axes apart: over student taps it differs.
    wrong_axis, _, _ = np_semckd(method, data, tau, softmax_axis=1)
    assert not np.isclose(out.losses["semckd"].numpy(), wrong_axis["semckd"], rtol=1e-3)


def test_attention_rows_sum_to_one_over_teacher_taps():
    method, data = built_semckd()
    grams = [kerakd.methods.semckd.gram(f) for f in data.student["features"]]
    teacher_grams = [kerakd.methods.semckd.gram(f) for f in data.teacher["features"]]
    att = method.attention(grams, teacher_grams).numpy()
    assert att.shape == (BATCH, len(STUDENT_SHAPES), len(TEACHER_SHAPES))
    np.testing.assert_allclose(att.sum(axis=-1), 1.0, rtol=1e-6)
    assert att.std(axis=0).max() > 1e-4, "attention should differ between examples"


def test_link_matrix_only_moves_in_training():
    method, data = built_semckd()
    method(data=data, training=False)
    np.testing.assert_array_equal(method.link_matrix.numpy(), 0.0)
    method(data=data, training=True)
    np.testing.assert_allclose(method.link_matrix.numpy().sum(axis=-1), 1.0, rtol=1e-6)


def test_adaptive_average_pool_follows_pytorch_bins():
    x = np.arange(2 * 7 * 2 * 1, dtype="float32").reshape(2, 7, 2, 1)
    pooled = adaptive_average_pool(x, (3, 4)).numpy()
    # adaptive_avg_pool2d bins of 7 -> 3 rows: [0, 3), [2, 5), [4, 7);
    # 2 -> 4 columns: each column repeated twice.
    rows = np.stack([x[:, 0:3].mean(1), x[:, 2:5].mean(1), x[:, 4:7].mean(1)], axis=1)
    np.testing.assert_allclose(pooled, np.repeat(rows, 2, axis=2), rtol=1e-6)


def test_teacher_taps_get_no_gradient_and_attention_is_trained():
    method, data = built_semckd()
    student = [tf.constant(f) for f in data.student["features"]]
    teacher = [tf.constant(f) for f in data.teacher["features"]]
    data.student, data.teacher = {"features": student}, {"features": teacher}
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(student + teacher)
        loss = method(data=data, training=True).losses["semckd"]
    assert all(g is None for g in tape.gradient(loss, teacher))
    assert all(g is not None and np.any(g.numpy()) for g in tape.gradient(loss, student))
    mlp_weights = [v for m in method.queries + method.keys for v in m.trainable_variables]
    gradients = tape.gradient(loss, mlp_weights)
    assert all(g is not None and np.any(g.numpy()) for g in gradients), "attention not trained"


def test_heterogeneous_pair_with_different_tap_counts_trains():
    teacher = kerakd.models.get("wrn_16_2", NUM_CLASSES, IMAGE_SHAPE)  # 3 stage taps
    student = kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
    distiller = kerakd.Distiller(
        student, "semckd", teacher, student_taps=["stage2", "stage3"]
    )
    distiller.compile(keras.optimizers.SGD(0.01, momentum=0.9))
    history = distiller.fit(make_dataset(n=16), epochs=1, verbose=0)
    for name in ("loss", "ce", "kd", "semckd", "sm_score"):
        assert np.isfinite(history.history[name][-1]), name
    link = distiller.method.link_matrix.numpy()
    assert link.shape == (2, 3)
    np.testing.assert_allclose(link.sum(axis=-1), 1.0, rtol=1e-5)


def test_another_batch_size_is_rejected_with_the_fix():
    method, _ = built_semckd()
    _, small = fixed_step(STUDENT_SHAPES, TEACHER_SHAPES, batch=4)
    message = r"built for a per-replica batch of 8.*drop_remainder=True"
    with pytest.raises(ValueError, match=message):
        method(data=small, training=True)


def test_unknown_batch_is_rejected_with_the_fix(teacher, student):
    images, labels = make_images(12), make_labels(12)
    ragged = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)  # 8 + 4
    distiller = kerakd.Distiller(student, "semckd", teacher)
    distiller.compile(keras.optimizers.SGD(0.01))
    with pytest.raises(ValueError, match="drop_remainder=True"):
        distiller.fit(ragged, epochs=1, verbose=0)


def test_default_weights_follow_the_spec():
    method = kerakd.methods.get("semckd")
    assert method.term_weights == {"ce": 1.0, "kd": 1.0, "semckd": 400.0}
    assert method.temperature == 4.0 and method.tau == 1.0


def test_config_round_trip_and_validation():
    method = kerakd.methods.get("semckd", semckd_weight=50.0, tau=4.0)
    config = method.get_config()
    assert config["semckd_weight"] == 50.0 and config["tau"] == 4.0
    assert type(method).from_config(config).term_weights == method.term_weights
    with pytest.raises(ValueError, match="tau"):
        kerakd.methods.get("semckd", tau=0.0)
    with pytest.raises(ValueError, match="semckd_weight"):
        kerakd.methods.get("semckd", semckd_weight=-1.0)
