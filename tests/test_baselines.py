"""SP, RKD, PKT, VID, DKD and AT against independent NumPy re-implementations of
RepDistiller's / mdistiller's code (docs/methods/README.md), on fixed inputs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd
from reference import build_on_taps as build
from reference import features, np_adaptive_pool, np_at_map, np_dkd, np_normalize
from reference import step_on_taps as step

B, K = 8, 5


def np_huber(a, b):
    x = np.abs(a - b)
    return np.mean(np.where(x < 1, 0.5 * x * x, x - 0.5))


# -- SP ---------------------------------------------------------------------

def np_sp(f_s, f_t):
    bsz = f_s.shape[0]
    f_s, f_t = f_s.reshape(bsz, -1).astype("float64"), f_t.reshape(bsz, -1).astype("float64")
    g_s, g_t = np_normalize(f_s @ f_s.T, 1), np_normalize(f_t @ f_t.T, 1)
    return ((g_t - g_s) ** 2).sum() / (bsz * bsz)


def test_sp_compares_the_last_stage_by_default():
    student = [features(B, 8, 8, 4, seed=s) for s in (1, 2)]
    teacher = [features(B, 8, 8, 6, seed=s) for s in (3, 4)]
    method = build(kerakd.methods.get("sp"), student, teacher)
    out = method(data=step(student, teacher))
    np.testing.assert_allclose(out.losses["sp"], np_sp(student[1], teacher[1]), rtol=1e-5)
    assert method.term_weights == {"ce": 1.0, "sp": 3000.0}


def test_sp_stage_none_sums_every_pair():
    student = [features(B, 8, 8, 4, seed=s) for s in (1, 2)]
    teacher = [features(B, 4, 4, 6, seed=s) for s in (3, 4)]
    method = build(kerakd.methods.get("sp", stage=None), student, teacher)
    expected = np_sp(student[0], teacher[0]) + np_sp(student[1], teacher[1])
    np.testing.assert_allclose(method(data=step(student, teacher)).losses["sp"], expected, rtol=1e-5)


def test_sp_rejects_an_out_of_range_stage():
    with pytest.raises(ValueError, match="stage=3"):
        build(kerakd.methods.get("sp", stage=3), [features(B, 4, 4, 2)], [features(B, 4, 4, 2)])


# -- RKD --------------------------------------------------------------------

def np_pdist(e):
    sq = (e**2).sum(1)
    d = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * e @ e.T, 1e-12, None))
    np.fill_diagonal(d, 0)
    return d


def np_angles(e):
    diff = np_normalize(e[None, :, :] - e[:, None, :], axis=2)
    return np.einsum("ijd,ikd->ijk", diff, diff)


def np_rkd(s, t):
    s, t = s.astype("float64"), t.astype("float64")
    d_s, d_t = np_pdist(s), np_pdist(t)
    d_s, d_t = d_s / d_s[d_s > 0].mean(), d_t / d_t[d_t > 0].mean()
    return np_huber(d_s, d_t), np_huber(np_angles(s), np_angles(t))


def test_rkd_terms_match_numpy():
    s, t = features(B, 16, positive=True, seed=1), features(B, 32, positive=True, seed=2)
    method = build(kerakd.methods.get("rkd"), [s], [t])
    out = method(data=step([s], [t]))
    distance, angle = np_rkd(s, t)
    np.testing.assert_allclose(out.losses["distance"], distance, rtol=1e-5)
    np.testing.assert_allclose(out.losses["angle"], angle, rtol=1e-5)
    assert method.term_weights == {"ce": 1.0, "distance": 25.0, "angle": 50.0}


def test_rkd_distance_huber_takes_the_linear_branch_for_large_errors():
    # Teacher distances in a 10:1 ratio, student equal: normalised errors > 1.
    t = np.array([[0, 0], [100, 0], [110, 0]] + [[0, 0]] * 5, "float32")
    s = features(B, 2, seed=3)
    method = build(kerakd.methods.get("rkd"), [s], [t])
    np.testing.assert_allclose(
        method(data=step([s], [t])).losses["distance"], np_rkd(s, t)[0], rtol=1e-5
    )


def test_rkd_needs_one_tap_per_side():
    with pytest.raises(ValueError, match="one student tap with one teacher tap"):
        build(kerakd.methods.get("rkd"), [features(B, 4)] * 2, [features(B, 4)])


# -- PKT --------------------------------------------------------------------

def np_pkt(s, t, eps=1e-7):
    def kernel(x):
        x = x.astype("float64")
        x = x / (np.sqrt((x**2).sum(1, keepdims=True)) + eps)
        k = (x @ x.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    k_s, k_t = kernel(s), kernel(t)
    return np.mean(k_t * np.log((k_t + eps) / (k_s + eps)))


def test_pkt_matches_numpy():
    s, t = features(B, 16, seed=1), features(B, 32, seed=2)
    method = build(kerakd.methods.get("pkt"), [s], [t])
    got = method(data=step([s], [t])).losses["pkt"]
    np.testing.assert_allclose(got, np_pkt(s, t), rtol=1e-5)
    assert method.term_weights == {"ce": 1.0, "pkt": 30000.0}


# -- VID --------------------------------------------------------------------

def np_vid(method, student, teacher):
    total = 0.0
    for f_s, f_t, regressor, log_scale in zip(
        student, teacher, method.regressors, method.log_scales
    ):
        f_s, f_t = f_s.astype("float64"), f_t.astype("float64")
        if f_s.shape[1] > f_t.shape[1]:  # adaptive average pooling
            p = f_s.shape[1] // f_t.shape[1]
            b, h, w, c = f_s.shape
            f_s = f_s.reshape(b, h // p, p, w // p, p, c).mean(axis=(2, 4))
        x = f_s
        for i, layer in enumerate(regressor.layers):  # 1x1 convs: channel matmuls
            x = x @ keras.ops.convert_to_numpy(layer.kernel)[0, 0]
            x = np.maximum(x, 0) if i < 2 else x
        var = np.log1p(np.exp(keras.ops.convert_to_numpy(log_scale))) + 1e-5
        total += np.mean(0.5 * ((x - f_t) ** 2 / var + np.log(var)))
    return total


def test_vid_matches_numpy_and_starts_at_the_initial_variance():
    student = [features(B, 8, 8, 4, seed=1), features(B, 4, 4, 8, seed=2)]
    teacher = [features(B, 4, 4, 6, seed=3), features(B, 4, 4, 12, seed=4)]
    method = build(kerakd.methods.get("vid"), student, teacher)
    np.testing.assert_allclose(
        np.log1p(np.exp(keras.ops.convert_to_numpy(method.log_scales[0]))) + 1e-5, 5.0, rtol=1e-6
    )
    got = method(data=step(student, teacher)).losses["vid"]
    np.testing.assert_allclose(got, np_vid(method, student, teacher), rtol=1e-5)
    assert method.term_weights == {"ce": 1.0, "vid": 1.0}


def test_vid_rejects_sizes_that_do_not_divide():
    with pytest.raises(ValueError, match="VID pair 0.*divide"):
        build(kerakd.methods.get("vid"), [features(B, 6, 6, 2)], [features(B, 4, 4, 2)])


# -- DKD --------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_terms_match_numpy(temperature):
    z_s, z_t = features(B, K, seed=1) * 3, features(B, K, seed=2) * 3
    y = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    method = build(kerakd.methods.get("dkd", temperature=temperature), [], [])
    out = method(data=step([], [], z_s, z_t, y))
    tckd, nckd = np_dkd(z_s, z_t, y, temperature)
    np.testing.assert_allclose(out.losses["tckd"], tckd, rtol=1e-5)
    np.testing.assert_allclose(out.losses["nckd"], nckd, rtol=1e-5)
    # Soft labels (MixUp) use their arg-max class.
    soft = np.eye(K, dtype="float32")[y] * 0.6 + 0.4 / K
    np.testing.assert_allclose(
        method(data=step([], [], z_s, z_t, soft)).losses["tckd"], tckd, rtol=1e-5
    )


def test_dkd_warmup_ramps_the_weights_per_epoch():
    method = build(kerakd.methods.get("dkd", tckd_weight=1.0, nckd_weight=8.0, warmup=20), [], [])
    weights = lambda: [float(method.term_weights[n]) for n in ("tckd", "nckd")]  # noqa: E731
    np.testing.assert_allclose(weights(), [1 / 20, 8 / 20])  # before any callback
    (callback,) = method.callbacks(log_dir=None, sample_images=None)
    for epoch, factor in [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (100, 1.0)]:
        callback.on_epoch_begin(epoch)
        np.testing.assert_allclose(weights(), [factor, 8 * factor], rtol=1e-6)
    no_ramp = build(kerakd.methods.get("dkd", warmup=0), [], [])
    assert float(no_ramp.term_weights["nckd"]) == 8.0


# -- AT ---------------------------------------------------------------------

def np_at(f_s, f_t):
    """RepDistiller's `Attention.at_loss`: the larger feature map is pooled
    to the smaller one's size, then both attention maps are compared."""
    f_s, f_t = f_s.astype("float64"), f_t.astype("float64")
    if f_s.shape[1] > f_t.shape[1]:
        f_s = np_adaptive_pool(f_s, f_t.shape[1:3])
    elif f_s.shape[1] < f_t.shape[1]:
        f_t = np_adaptive_pool(f_t, f_s.shape[1:3])
    return np.mean((np_at_map(f_s) - np_at_map(f_t)) ** 2)


AT_PAIRS = {
    "student_larger": ((B, 8, 8, 3), (B, 4, 4, 6)),
    "teacher_larger": ((B, 4, 4, 3), (B, 8, 8, 6)),
    "uneven_bins": ((B, 7, 7, 3), (B, 3, 3, 6)),  # PyTorch's overlapping bins
}


@pytest.mark.parametrize("pair", sorted(AT_PAIRS))
def test_at_pools_the_larger_feature_map_as_repdistiller(pair):
    s_shape, t_shape = AT_PAIRS[pair]
    student = [features(*s_shape, seed=1), features(B, 2, 2, 4, seed=2)]
    teacher = [features(*t_shape, seed=3), features(B, 2, 2, 5, seed=4)]
    method = build(kerakd.methods.get("at"), student, teacher)
    got = method(data=step(student, teacher)).losses["at"]
    expected = np_at(student[0], teacher[0]) + np_at(student[1], teacher[1])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert method.term_weights == {"ce": 1.0, "at": 1000.0}
    # The feature map is pooled, not its channel energy mean_c f^2: the two
    # orders differ, so the check above tells them apart.
    f_s, f_t = student[0].astype("float64"), teacher[0].astype("float64")
    e_s, e_t = (f_s ** 2).mean(-1, keepdims=True), (f_t ** 2).mean(-1, keepdims=True)
    small = min(f_s.shape[1:3], f_t.shape[1:3])
    e_s, e_t = np_adaptive_pool(e_s, small), np_adaptive_pool(e_t, small)
    pooled_energy = np.mean((np_at_map(np.sqrt(e_s)) - np_at_map(np.sqrt(e_t))) ** 2)
    assert abs(pooled_energy - np_at(f_s, f_t)) > 1e-2 * np_at(f_s, f_t)


def test_at_gradient_reaches_a_pooled_student_never_the_teacher():
    f_s = tf.Variable(features(B, 8, 8, 3, seed=1))
    f_t = tf.Variable(features(B, 4, 4, 6, seed=2))
    method = build(kerakd.methods.get("at"), [f_s], [f_t])
    with tf.GradientTape() as tape:
        loss = method(data=step([f_s], [f_t])).losses["at"]
    g_s, g_t = tape.gradient(loss, [f_s, f_t])
    assert g_t is None
    assert np.isfinite(g_s.numpy()).all() and (np.abs(g_s.numpy()).sum(axis=(0, 3)) > 0).all()


def test_at_rejects_sizes_that_do_not_nest():
    with pytest.raises(ValueError, match="AT pair 0.*neither can be pooled"):
        build(kerakd.methods.get("at"), [features(B, 8, 4, 2)], [features(B, 4, 8, 2)])


# -- shared -----------------------------------------------------------------

GRADIENT_CASES = {
    "sp": ((B, 4, 4, 3), (B, 4, 4, 5)),
    "rkd": ((B, 6), (B, 10)),
    "pkt": ((B, 6), (B, 10)),
    "vid": ((B, 4, 4, 3), (B, 2, 2, 5)),
}


@pytest.mark.parametrize("name", sorted(GRADIENT_CASES))
def test_gradients_reach_student_and_method_never_teacher(name):
    s_shape, t_shape = GRADIENT_CASES[name]
    f_s = tf.Variable(features(*s_shape, positive=True, seed=1))
    f_t = tf.Variable(features(*t_shape, positive=True, seed=2))
    method = build(kerakd.methods.get(name), [f_s], [f_t])
    with tf.GradientTape() as tape:
        out = method(data=step([f_s], [f_t]))
        loss = out.losses[name if name != "rkd" else "angle"]
        if name == "rkd":
            loss += out.losses["distance"]
    g_s, g_t, *g_method = tape.gradient(loss, [f_s, f_t, *method.trainable_variables])
    assert g_t is None
    assert np.abs(g_s.numpy()).sum() > 0 and np.isfinite(g_s.numpy()).all()
    assert all(g is not None and np.abs(g.numpy()).sum() > 0 for g in g_method)


def test_dkd_gradients_reach_the_student_logits_only():
    z_s, z_t = tf.Variable(features(B, K, seed=1)), tf.Variable(features(B, K, seed=2))
    method = build(kerakd.methods.get("dkd"), [], [])
    with tf.GradientTape() as tape:
        out = method(data=step([], [], z_s, z_t))
        loss = out.losses["tckd"] + out.losses["nckd"]
    g_s, g_t = tape.gradient(loss, [z_s, z_t])
    assert g_t is None and np.abs(g_s.numpy()).sum() > 0


@pytest.mark.parametrize("name", ["sp", "rkd", "pkt", "vid", "dkd", "crd"])
def test_config_round_trip(name):
    method = kerakd.methods.get(name)
    again = type(method).from_config(method.get_config())
    assert again.get_config() == method.get_config()


@pytest.mark.parametrize("name, kwargs, match", [
    ("sp", {"sp_weight": -1}, "sp_weight"),
    ("rkd", {"angle_weight": -1}, "angle_weight"),
    ("pkt", {"pkt_weight": -1}, "pkt_weight"),
    ("vid", {"init_variance": 0.0}, "init_variance"),
    ("dkd", {"temperature": 0}, "temperature"),
    ("dkd", {"nckd_weight": -8}, "nckd_weight"),
])
def test_bad_hyperparameters_are_named(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kerakd.methods.get(name, **kwargs)


def test_dkd_warmup_set_before_the_method_is_built_applies_at_build():
    method = kerakd.methods.get("dkd", tckd_weight=1.0, nckd_weight=8.0, warmup=20)
    (callback,) = method.callbacks(log_dir=None, sample_images=None)
    callback.on_epoch_begin(9)  # a plain fit: the first epoch begins before the build
    build(method, [], [])
    np.testing.assert_allclose([float(method.term_weights[n]) for n in ("tckd", "nckd")],
                               [10 / 20, 80 / 20], rtol=1e-6)
