"""Logit standardisation (LS) as an option of `kd` and `dkd`, against float64
NumPy (docs/methods/kd.md, "Logit standardisation"; docs/methods/dkd.md)."""

import numpy as np
import pytest
import tensorflow as tf

import kerakd
from kerakd import losses
from reference import np_ce, np_dkd, np_kd, np_standardize
from reference import build_on_taps as build
from reference import features
from reference import step_on_taps as step

B, K = 8, 5


def test_standardize_divides_by_the_unbiased_deviation():
    np.testing.assert_allclose(losses.standardize_logits(np.array([[1.0, 2.0, 3.0, 4.0]])),
                               [[-1.1619, -0.3873, 0.3873, 1.1619]], atol=1e-4)
    np.testing.assert_allclose(losses.unbiased_std(np.array([[1.0, 2.0, 3.0, 4.0]])), [1.2910],
                               atol=1e-4)
    z = features(B, K, seed=3) * 5
    np.testing.assert_allclose(losses.standardize_logits(z), np_standardize(z), rtol=1e-5, atol=1e-6)


def test_standardized_kd_ignores_each_sides_scale_and_shift():
    z_s, z_t = features(B, K, seed=1), features(B, K, seed=2)
    n = losses.standardize_logits
    base = float(losses.kd_loss(n(z_s), n(z_t), 2.0))
    moved = float(losses.kd_loss(n(3.0 * z_s - 7.0), n(0.5 * z_t + 2.0), 2.0))
    np.testing.assert_allclose(moved, base, rtol=1e-5)
    assert abs(float(losses.kd_loss(3.0 * z_s, z_t, 2.0)) - float(losses.kd_loss(z_s, z_t, 2.0))) > 1e-3


def test_kd_with_ls_has_the_authors_defaults_and_loss():
    method = build(kerakd.methods.get("kd", logit_standardization=True), [], [])
    assert (method.ce_weight, method.kd_weight, method.temperature) == (0.1, 9.0, 2.0)
    z_s, z_t = features(B, K, seed=1) * 3, features(B, K, seed=2) * 8
    y = np.arange(B) % K
    out = method(data=step([], [], z_s, z_t, y))
    total = sum(float(method.term_weights[k]) * float(v) for k, v in out.losses.items())
    # 9 * T^2 = 36 times the mean KL of the standardised logits at T = 2.
    expected = 0.1 * np_ce(z_s, y) + 9 * np_kd(np_standardize(z_s), np_standardize(z_t), 2.0)
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    np.testing.assert_allclose(out.metrics["student_logit_std"],
                               z_s.astype("float64").std(-1, ddof=1).mean(), rtol=1e-5)
    np.testing.assert_allclose(out.metrics["teacher_logit_std"],
                               z_t.astype("float64").std(-1, ddof=1).mean(), rtol=1e-5)
    # Set weights win over the presets; without LS the defaults are KD's.
    assert kerakd.methods.get("kd", kd_weight=3.0, logit_standardization=True).kd_weight == 3.0
    plain = kerakd.methods.get("kd")
    assert (plain.kd_weight, plain.temperature, plain.logit_standardization) == (0.9, 4.0, False)


def test_dkd_with_ls_is_dkd_of_the_standardised_logits():
    method = build(kerakd.methods.get("dkd", logit_standardization=True, warmup=0), [], [])
    assert (method.tckd_weight, method.nckd_weight, method.temperature) == (9.0, 72.0, 2.0)
    z_s, z_t = features(B, K, seed=4) * 3, features(B, K, seed=5) * 6
    y = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    out = method(data=step([], [], z_s, z_t, y))
    tckd, nckd = np_dkd(np_standardize(z_s), np_standardize(z_t), y, 2.0)
    np.testing.assert_allclose(out.losses["tckd"], tckd, rtol=1e-5)
    np.testing.assert_allclose(out.losses["nckd"], nckd, rtol=1e-5)
    total = sum(float(method.term_weights[k]) * float(v) for k, v in out.losses.items())
    np.testing.assert_allclose(total, np_ce(z_s, y) + 9 * tckd + 72 * nckd, rtol=1e-5)


FEATURE_HOSTS = {
    # name: (extra arguments, student taps, teacher taps)
    "semckd": ({}, [(B, 8, 8, 4), (B, 4, 4, 8)], [(B, 8, 8, 6), (B, 4, 4, 12)]),
    "afd": ({"qk_dim": 8}, [(B, 8, 8, 4), (B, 4, 4, 8)], [(B, 8, 8, 6), (B, 4, 4, 12)]),
    "crd": ({"queue": True, "negatives": 16, "feat_dim": 8}, [(B, 16)], [(B, 24)]),
}


@pytest.mark.parametrize("name", sorted(FEATURE_HOSTS))
def test_the_kd_term_of_a_feature_method_takes_ls(name):
    arguments, student_shapes, teacher_shapes = FEATURE_HOSTS[name]
    student = [features(*s, seed=20 + i) for i, s in enumerate(student_shapes)]
    teacher = [features(*s, seed=30 + i) for i, s in enumerate(teacher_shapes)]
    z_s, z_t = features(B, K, seed=1) * 3, features(B, K, seed=2) * 8
    y = np.arange(B) % K
    with_ls = build(kerakd.methods.get(name, logit_standardization=True, **arguments),
                    student, teacher, classes=K)
    # The presets of KD with LS: weight 9 at base temperature 2; the other terms keep theirs.
    assert (with_ls.term_weights["kd"], with_ls.temperature) == (9.0, 2.0)
    plain = kerakd.methods.get(name, **arguments)
    assert {k: v for k, v in with_ls.term_weights.items() if k != "kd"} == {
        k: v for k, v in plain.term_weights.items() if k != "kd"}
    out = with_ls(data=step(student, teacher, z_s, z_t, y, classes=K), training=True)
    np.testing.assert_allclose(out.losses["kd"],
                               np_kd(np_standardize(z_s), np_standardize(z_t), 2.0), rtol=1e-5)
    np.testing.assert_allclose(out.metrics["student_logit_std"],
                               z_s.astype("float64").std(-1, ddof=1).mean(), rtol=1e-5)
    plain = build(plain, student, teacher, classes=K)
    out = plain(data=step(student, teacher, z_s, z_t, y, classes=K), training=True)
    np.testing.assert_allclose(out.losses["kd"], np_kd(z_s, z_t, 4.0), rtol=1e-5)
    assert "student_logit_std" not in out.metrics
    # The setting survives the config.
    config = with_ls.get_config()
    assert config["logit_standardization"] is True
    assert kerakd.methods.get(name, **{k: v for k, v in config.items()
                                       if k in ("kd_weight", "temperature",
                                                "logit_standardization")},
                              **arguments).term_weights["kd"] == 9.0


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_the_gradient_flows_through_the_students_mean_and_deviation(name):
    extra = {"warmup": 0} if name == "dkd" else {}
    method = build(kerakd.methods.get(name, logit_standardization=True, ce_weight=0.0, **extra),
                   [], [])
    z_s, z_t = features(B, K, seed=6) * 2, features(B, K, seed=7) * 4
    y = np.arange(B) % K
    variable = tf.Variable(z_s)
    with tf.GradientTape() as tape:
        out = method(data=step([], [], variable, z_t, y))
        total = sum(method.term_weights[k] * v for k, v in out.losses.items())
    got = tape.gradient(total, variable).numpy()

    def np_loss(s, frozen_stats=False):
        s = s.astype("float64")
        if frozen_stats:  # mean and deviation of the unperturbed logits, held constant
            n_s = (s - z_s.mean(-1, keepdims=True)) / (z_s.std(-1, ddof=1, keepdims=True) + 1e-7)
        else:
            n_s = np_standardize(s)
        n_t = np_standardize(z_t)
        if name == "kd":
            return 9 * np_kd(n_s, n_t, 2.0)
        tckd, nckd = np_dkd(n_s, n_t, y, 2.0)
        return 9 * tckd + 72 * nckd

    def finite_difference(frozen_stats):
        grad, h = np.zeros_like(z_s, dtype="float64"), 1e-6
        for index in np.ndindex(*z_s.shape):
            up, down = z_s.astype("float64"), z_s.astype("float64")
            up[index] += h
            down[index] -= h
            grad[index] = (np_loss(up, frozen_stats) - np_loss(down, frozen_stats)) / (2 * h)
        return grad

    np.testing.assert_allclose(got, finite_difference(False), rtol=1e-3, atol=1e-5)
    assert np.abs(got - finite_difference(True)).max() > 1e-2


def test_ls_round_trips_and_reaches_the_command_line():
    from method_harness import run_config_round_trip
    from kerakd import flags as kerakd_flags
    from absl import flags

    run_config_round_trip(kerakd.methods.get("kd", logit_standardization=True))
    run_config_round_trip(kerakd.methods.get("dkd", logit_standardization=True))
    flag_values = flags.FlagValues()
    kerakd_flags.define_flags(flag_values)
    kerakd_flags.parse_into(flag_values, ["prog", "--method=kd", "--model_dir=x", "--kd_logit_standardization"])
    assert kerakd_flags.method_hparams(flag_values) == {"kd": {"logit_standardization": True}}
    kerakd_flags.parse_into(flag_values, ["prog", "--method=dkd", "--model_dir=x", "--dkd_nckd_weight=16"])
    assert kerakd_flags.method_hparams(flag_values)["dkd"] == {"nckd_weight": 16}


@pytest.mark.parametrize("name, expected", [
    ("kd_ls", {"kd": {"ce_weight": 0.1, "kd_weight": 9, "temperature": 2,
                      "logit_standardization": True}}),
    ("dkd_ls", {"dkd": {"ce_weight": 1, "tckd_weight": 9, "nckd_weight": 72, "temperature": 2, "warmup": 20,
                        "logit_standardization": True}}),
])
def test_the_ls_configs_give_the_authors_settings(name, expected):
    import os
    from kerakd import flags as kerakd_flags

    path = os.path.join(os.path.dirname(__file__), os.pardir, "configs", f"{name}.flags")
    flag_values = kerakd_flags.parse(["kerakd-train", f"--flagfile={path}"])
    assert kerakd_flags.method_hparams(flag_values) == expected
    assert (flag_values.epochs, flag_values.learning_rate, flag_values.student) == (240, 0.05,
                                                                                     "resnet8x4")


def test_run_flags_record_what_the_presets_resolve_to(tmp_path):
    from kerakd import flags as kerakd_flags
    from kerakd import run_directory

    base = ["kerakd-train", "--method=kd", f"--model_dir={tmp_path}"]
    resolved = kerakd_flags.flag_dict(kerakd_flags.parse([*base, "--kd_logit_standardization"]))
    assert (resolved["kd_kd_weight"], resolved["kd_temperature"]) == (9.0, 2.0)
    # A run recorded without the weights (the defaults) is the same recipe as
    # one that spells them out, and not the same as one with LS.
    (tmp_path / run_directory.RUN_FLAGS).write_text(f"--method=kd\n--model_dir={tmp_path}\n")
    spelled = kerakd_flags.parse([*base, "--kd_kd_weight=0.9", "--kd_temperature=4"])
    assert run_directory.flag_changes(str(tmp_path), spelled) == []
    with_ls = kerakd_flags.parse([*base, "--kd_logit_standardization"])
    assert "--kd_kd_weight: 0.9 -> 9.0" in run_directory.flag_changes(str(tmp_path), with_ls)
