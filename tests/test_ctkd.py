"""CTKD (curriculum temperature): the learned temperature, the gradient
reversal and its curriculum, against float64 NumPy references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd
from kerakd import train
from kerakd.methods.base import StepData, TapSpec
from kerakd.methods.ctkd import CTKD, curriculum_lambda, gradient_reversal

from reference import IMAGE_SHAPE, NUM_CLASSES, make_dataset
from reference import np_ce, np_dkd, np_kd, np_log_softmax, np_standardize

B, K = 8, 5
LABELS = np.array([0, 1, 2, 3, 4, 0, 1, 2])


def built(**kwargs):
    method = kerakd.methods.get("ctkd", **kwargs)
    method.build(TapSpec(student={}, teacher={}, student_logits=(B, K), teacher_logits=(B, K),
                         image_shape=(B, *IMAGE_SHAPE)))
    return method


def logits(seed, scale=3.0):
    return (np.random.default_rng(seed).normal(size=(B, K)) * scale).astype("float32")


def step(z_s, z_t, labels=LABELS):
    return StepData(images=None, labels=labels, student={}, student_logits=z_s,
                    teacher={}, teacher_logits=z_t, training=True)


# -- float64 NumPy references ---------------------------------------------------


def np_temperature(theta, t_start=1.0, t_range=20.0):
    return t_start + t_range / (1 + np.exp(-theta))


def total(method, out):
    return sum(float(method.term_weights[n]) * float(v) for n, v in out.losses.items())


# -- the temperature and its curriculum ------------------------------------------

def test_the_temperature_starts_at_15_62_and_stays_in_its_range():
    method = built()
    assert float(method.theta) == 1.0
    np.testing.assert_allclose(float(method.temperature()), 15.6212, atol=1e-4)
    for theta in (-8.0, -2.0, 0.0, 3.0, 8.0):
        method.theta.assign(theta)
        t = float(method.temperature())
        assert 1.0 < t < 21.0
        np.testing.assert_allclose(t, np_temperature(theta), rtol=1e-6)
    for theta in (-100.0, 100.0):  # saturated sigmoid: the bounds, never beyond
        method.theta.assign(theta)
        assert 1.0 <= float(method.temperature()) <= 21.0
    shifted = built(t_start=2.0, t_range=5.0, initial_theta=0.0)
    np.testing.assert_allclose(float(shifted.temperature()), 4.5, rtol=1e-6)


def test_the_curriculum_rises_along_a_half_cosine_over_ten_epochs():
    expected = [0.02447, 0.09549, 0.20611, 0.34549, 0.5, 0.65451, 0.79389, 0.90451,
                0.97553, 1.0, 1.0, 1.0]
    got = [curriculum_lambda(e, 10) for e in range(1, 13)]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert curriculum_lambda(0, 10) == 0.0
    assert curriculum_lambda(1, 0) == 1.0  # no curriculum: full reversal at once
    # The variable holds the first epoch's value before any callback runs.
    np.testing.assert_allclose(float(built().grl_lambda), 0.024472, atol=1e-6)
    np.testing.assert_allclose(float(built(decay_epochs=4).grl_lambda), curriculum_lambda(1, 4))


def test_gradient_reversal_is_the_identity_forward_and_negates_backward():
    theta = tf.Variable(1.7)
    for scale in (0.0, 0.3, 1.0):
        with tf.GradientTape() as tape:
            reversed_theta = gradient_reversal(theta, scale)
            squared = reversed_theta * reversed_theta
        assert float(reversed_theta) == float(theta)
        np.testing.assert_allclose(float(tape.gradient(squared, theta)), -2 * scale * 1.7,
                                   rtol=1e-6)
    # The forward value is exact, bit for bit, for any input.
    x = np.random.default_rng(0).normal(size=100).astype("float32") * 50
    np.testing.assert_array_equal(gradient_reversal(x, 0.024471741), x)


# -- gradients -------------------------------------------------------------------

def test_one_sgd_step_raises_kd_through_theta_and_lowers_it_through_the_student():
    method = built(ce_weight=0.0)
    method.grl_lambda.assign(1.0)
    z_s0, z_t = logits(1), logits(2)
    z_s = tf.Variable(z_s0)
    theta0 = float(method.theta)
    lr = 0.1
    with tf.GradientTape() as tape:
        out = method(data=step(z_s, z_t))
        loss = sum(method.term_weights[n] * v for n, v in out.losses.items())
    variables = [z_s, method.theta]
    keras.optimizers.SGD(lr).apply_gradients(zip(tape.gradient(loss, variables), variables))

    t0 = np_temperature(theta0)
    # NumPy finite differences of KD_T in T, chained through T(theta).
    h = 1e-5
    dkd_dt = (np_kd(z_s0, z_t, t0 + h) - np_kd(z_s0, z_t, t0 - h)) / (2 * h)
    sigmoid = 1 / (1 + np.exp(-theta0))
    dt_dtheta = 20 * sigmoid * (1 - sigmoid)
    # The reversal flips the sign: SGD on theta ascends 0.9 * KD_T.
    expected_theta = theta0 + lr * 1.0 * 0.9 * dkd_dt * dt_dtheta
    assert abs(expected_theta - theta0) > 1e-3
    np.testing.assert_allclose(float(method.theta), expected_theta, rtol=1e-4)
    t1 = np_temperature(float(method.theta))
    assert np_kd(z_s0, z_t, t1) > np_kd(z_s0, z_t, t0)
    # The student descends: d KD_T / d z_s = T (p_s - p_t) / B at the old T.
    p_s = np.exp(np_log_softmax(np.float64(z_s0) / t0))
    p_t = np.exp(np_log_softmax(np.float64(z_t) / t0))
    np.testing.assert_allclose(z_s.numpy(), z_s0 - lr * 0.9 * t0 * (p_s - p_t) / B,
                               rtol=1e-4, atol=1e-6)
    assert np_kd(z_s.numpy(), z_t, t0) < np_kd(z_s0, z_t, t0)


@pytest.mark.parametrize("host", ["kd", "dkd"])
def test_lambda_zero_leaves_theta_without_gradient(host):
    method = built(host=host)
    method.set_curriculum_epoch(0)
    assert float(method.grl_lambda) == 0.0
    with tf.GradientTape() as tape:
        loss = sum(method.term_weights[n] * v
                   for n, v in method(data=step(logits(1), logits(2))).losses.items())
    gradient = tape.gradient(loss, method.theta)
    assert gradient is not None and float(gradient) == 0.0


@pytest.mark.parametrize("kwargs", [{}, {"host": "dkd"}, {"logit_standardization": True}])
def test_gradients_reach_student_and_theta_never_the_teacher(kwargs):
    method = built(**kwargs)
    z_s, z_t = tf.Variable(logits(1)), tf.Variable(logits(2))
    with tf.GradientTape() as tape:
        out = method(data=step(z_s, z_t))
        loss = sum(method.term_weights[n] * v for n, v in out.losses.items())
    g_s, g_t, g_theta = tape.gradient(loss, [z_s, z_t, method.theta])
    assert g_t is None
    assert np.abs(g_s.numpy()).sum() > 0 and abs(float(g_theta)) > 0


def test_the_distiller_trains_theta_with_the_students_weight_decay(student, teacher):
    method = kerakd.methods.get("ctkd")
    distiller = kerakd.Distiller(student, method, teacher, weight_decay=0.5)
    distiller.compile(keras.optimizers.SGD(0.1))
    distiller.build((8, *IMAGE_SHAPE))
    assert any(v is method.theta for v in distiller.trainable_variables)
    method.set_curriculum_epoch(0)  # no loss gradient: weight decay alone moves theta
    distiller.fit(make_dataset(n=8), epochs=1, verbose=0)
    np.testing.assert_allclose(float(method.theta), 1.0 * (1 - 0.1 * 0.5), rtol=1e-6)


# -- the whole loss against NumPy ------------------------------------------------

def test_host_kd_matches_numpy():
    method = built()
    method.theta.assign(-0.7)
    z_s, z_t = logits(1), logits(2)
    out = method(data=step(z_s, z_t))
    t = np_temperature(-0.7)
    assert method.term_weights == {"ce": 0.1, "kd": 0.9}
    np.testing.assert_allclose(float(out.losses["ce"]), np_ce(z_s, LABELS), rtol=1e-5)
    np.testing.assert_allclose(float(out.losses["kd"]), np_kd(z_s, z_t, t), rtol=1e-5)
    np.testing.assert_allclose(total(method, out),
                               0.1 * np_ce(z_s, LABELS) + 0.9 * np_kd(z_s, z_t, t), rtol=1e-5)
    np.testing.assert_allclose(float(out.metrics["temperature"]), t, rtol=1e-6)
    assert float(out.metrics["theta"]) == pytest.approx(-0.7)
    assert float(out.metrics["lambda"]) == pytest.approx(curriculum_lambda(1, 10))


def test_host_dkd_matches_numpy():
    method = built(host="dkd")
    method.theta.assign(0.4)
    z_s, z_t = logits(3), logits(4)
    out = method(data=step(z_s, z_t))
    t = np_temperature(0.4)
    tckd, nckd = np_dkd(z_s, z_t, LABELS, t)
    assert method.term_weights == {"ce": 1.0, "tckd": 1.0, "nckd": 2.0}
    np.testing.assert_allclose(float(out.losses["tckd"]), tckd, rtol=1e-5)
    np.testing.assert_allclose(float(out.losses["nckd"]), nckd, rtol=1e-5)
    np.testing.assert_allclose(total(method, out),
                               np_ce(z_s, LABELS) + tckd + 2 * nckd, rtol=1e-5)
    # Soft labels (MixUp) split on their arg-max class.
    soft = np.eye(K, dtype="float32")[LABELS] * 0.6 + 0.4 / K
    np.testing.assert_allclose(float(method(data=step(z_s, z_t, soft)).losses["nckd"]), nckd,
                               rtol=1e-5)


def test_logit_standardization_matches_numpy_with_the_ls_weights():
    method = built(logit_standardization=True)
    method.theta.assign(-1.2)
    z_s, z_t = logits(5, scale=1.0), logits(6, scale=8.0) + 3.0
    out = method(data=step(z_s, z_t))
    t = np_temperature(-1.2)
    assert method.term_weights == {"ce": 0.1, "kd": 9.0}
    kd = np_kd(np_standardize(z_s), np_standardize(z_t), t)
    np.testing.assert_allclose(float(out.losses["kd"]), kd, rtol=1e-5)
    np.testing.assert_allclose(total(method, out), 0.1 * np_ce(z_s, LABELS) + 9 * kd, rtol=1e-5)
    np.testing.assert_allclose(float(out.metrics["student_logit_std"]),
                               np.float64(z_s).std(1, ddof=1).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(out.metrics["teacher_logit_std"]),
                               np.float64(z_t).std(1, ddof=1).mean(), rtol=1e-5)
    # Invariant to a per-side scale and shift of the logits.
    again = method(data=step(2.5 * z_s - 1.0, 0.5 * z_t + 7.0)).losses["kd"]
    np.testing.assert_allclose(float(again), kd, rtol=1e-4)
    # The DKD host standardises before the target/non-target split.
    dkd = built(host="dkd", logit_standardization=True)
    assert dkd.term_weights == {"ce": 1.0, "tckd": 9.0, "nckd": 18.0}
    dkd.theta.assign(-1.2)
    tckd, nckd = np_dkd(np_standardize(z_s), np_standardize(z_t), LABELS, t)
    dkd_out = dkd(data=step(z_s, z_t))
    np.testing.assert_allclose([float(dkd_out.losses["tckd"]), float(dkd_out.losses["nckd"])],
                               [tckd, nckd], rtol=1e-5)
    assert "student_logit_std" not in built()(data=step(z_s, z_t)).metrics


# -- hyperparameters ------------------------------------------------------------

def test_unset_weights_resolve_to_numbers_in_the_config():
    config = CTKD(logit_standardization=True).get_config()
    assert (config["ce_weight"], config["kd_weight"]) == (0.1, 9.0)
    assert config["tckd_weight"] is None and config["nckd_weight"] is None
    assert CTKD(kd_weight=2, logit_standardization=True).kd_weight == 2.0  # the user's value wins
    dkd = CTKD(host="dkd").get_config()
    assert (dkd["ce_weight"], dkd["tckd_weight"], dkd["nckd_weight"]) == (1.0, 1.0, 2.0)
    assert dkd["kd_weight"] is None
    assert CTKD.from_config(dkd).get_config() == dkd


@pytest.mark.parametrize("kwargs, match", [
    ({"host": "mlkd"}, "`host`"),
    ({"host": "dkd", "kd_weight": 0.9}, "`kd_weight` weights a term of host='kd'"),
    ({"nckd_weight": 8.0}, "`nckd_weight`"),
    ({"t_start": 0.0}, "`t_start`"),
    ({"t_range": -1.0}, "`t_range`"),
    ({"decay_epochs": -1}, "`decay_epochs`"),
    ({"decay_epochs": 2.5}, "`decay_epochs`"),
    ({"host": "dkd", "tckd_weight": -1.0}, "`tckd_weight`"),
    ({"kd_weight": -1.0}, "`kd_weight`"),
])
def test_bad_hyperparameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kerakd.methods.get("ctkd", **kwargs)


# -- the curriculum in training --------------------------------------------------

def fit(initial_epoch, epochs, **kwargs):
    keras.utils.set_random_seed(0)
    student = kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
    teacher = kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
    method = kerakd.methods.get("ctkd", decay_epochs=4, **kwargs)
    distiller = kerakd.Distiller(student, method, teacher, weight_decay=5e-4)
    distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9), run_eagerly=True)
    history = distiller.fit(make_dataset(n=8), epochs=epochs, initial_epoch=initial_epoch,
                            callbacks=method.callbacks(None, None), verbose=0).history
    return method, history


def test_the_callback_sets_lambda_each_epoch_and_a_resumed_fit_continues_it():
    method, history = fit(0, 3, logit_standardization=True)
    expected = [curriculum_lambda(e, 4) for e in range(1, 4)]
    np.testing.assert_allclose(history["lambda"], expected, rtol=1e-6)
    assert float(method.grl_lambda) == pytest.approx(expected[-1])
    for name in ("temperature", "theta", "student_logit_std", "teacher_logit_std"):
        assert np.isfinite(history[name]).all(), name
    assert 1 < min(history["temperature"]) and max(history["temperature"]) < 21
    assert history["theta"][-1] != 1.0  # theta is trained
    _, resumed = fit(2, 3)
    np.testing.assert_allclose(resumed["lambda"], expected[2:], rtol=1e-6)


@pytest.mark.slow
def test_a_tiny_ctkd_run_from_the_command_line(tmp_path):
    tiny = ["--dataset=synthetic", "--student=resnet8", "--batch_size=16",
            "--steps_per_epoch=2", "--lr_milestones=", "--epochs=2"]
    teacher_dir = tmp_path / "teacher"
    train.run_with_args(["--method=none", *tiny, "--epochs=1", f"--model_dir={teacher_dir}"])
    results = train.run_with_args(
        ["--method=ctkd", f"--teacher={teacher_dir / 'student.keras'}", *tiny,
         "--ctkd_host=dkd", "--ctkd_nckd_weight=4", "--ctkd_decay_epochs=2",
         f"--model_dir={tmp_path / 'ctkd'}"])
    assert results["flags"]["ctkd_nckd_weight"] == 4.0
    lambdas = [epoch["lambda"] for epoch in results["history"]]
    np.testing.assert_allclose(lambdas, [curriculum_lambda(1, 2), curriculum_lambda(2, 2)],
                               rtol=1e-6)
    for epoch in results["history"]:
        assert 1 < epoch["temperature"] < 21 and np.isfinite(epoch["nckd"])
