"""LFMA and DSN (docs/methods/lfma.md): Feature Map Cutout, loss terms against NumPy, gradients, fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd
from kerakd.methods.base import StepData, TapSpec
from kerakd.methods.lfma import DSN, LFMA, FeatureMapCutout
from reference import (IMAGE_SHAPE, NUM_CLASSES, make_dataset, make_images, make_labels, np_ce,
                       np_kl, np_log_softmax, numpy_branch)
from reference import randomize_weights as randomize

TAPS = [(8, 16, 16, 8), (8, 8, 8, 16), (8, 4, 4, 32)]
SPEC = TapSpec(
    student={"features": TAPS},
    teacher={},
    student_logits=(8, NUM_CLASSES),
    teacher_logits=None,
    image_shape=(8, *IMAGE_SHAPE),
    student_tap_names={"features": ["stage1", "stage2", "stage3"]},
)


def built(method, spec=SPEC):
    method.build(spec)
    for head in method.heads:
        randomize(head, seed=len(head.name))
    return method


def step_data(seed=0):
    rng = np.random.default_rng(seed)
    return StepData(
        images=make_images(8),
        labels=make_labels(8),
        student={"features": [rng.normal(size=s).astype("float32") for s in TAPS]},
        student_logits=(2 * rng.normal(size=(8, NUM_CLASSES))).astype("float32"),
    )


# -- NumPy reference of docs/methods/lfma.md ------------------------------------------------


def numpy_head_logits(method, data, training=False):
    logits = []
    for i, head in zip(method.head_taps, method.heads):
        strides = [2] * (2 - i) or [1]  # stage1: 2 halvings, stage2: 1, stage3: none
        features = numpy_branch(head, head.name, data.student["features"][i], strides, training)
        kernel, bias = head.get_layer(f"{head.name}_logits").get_weights()
        logits.append(features @ kernel + bias)
    return logits


def numpy_lfma_terms(head_logits, backbone_logits, labels, t):
    ensemble = np.mean([np.exp(np_log_softmax(z / t)) for z in head_logits], axis=0)
    return {
        "kd": t * t * np_kl(ensemble, np_log_softmax(backbone_logits / t)),
        "head_kd": sum(t * t * np_kl(ensemble, np_log_softmax(z / t)) for z in head_logits),
        "ce": np_ce(backbone_logits, labels),
        "head_ce": sum(np_ce(z, labels) for z in head_logits),
    }, ensemble


# -- Feature Map Cutout --------------------------------------------------------


def test_fmc_drops_whole_positions_across_channels_at_the_requested_rate():
    cutout = FeatureMapCutout(0.25, seed=1)
    x = np.ones((8, 16, 16, 4), "float32")
    masked = np.asarray(cutout(x, training=True))
    # A position is either kept in every channel or zeroed in every channel.
    assert set(np.unique(masked)) == {0.0, 1.0}
    np.testing.assert_array_equal(masked, masked[..., :1].repeat(4, axis=-1))
    dropped = 1 - masked[..., 0]
    # 2048 positions: the standard error of the rate is ~0.01.
    assert abs(dropped.mean() - 0.25) < 0.04
    # A fresh mask per example and per call.
    assert not np.array_equal(dropped[0], dropped[1])
    assert not np.array_equal(masked, np.asarray(cutout(x, training=True)))


def test_fmc_is_the_identity_at_inference_and_at_rate_zero():
    x = np.random.default_rng(0).normal(size=(8, 16, 16, 4)).astype("float32")
    np.testing.assert_array_equal(np.asarray(FeatureMapCutout(0.5)(x, training=False)), x)
    np.testing.assert_array_equal(np.asarray(FeatureMapCutout(0.0)(x, training=True)), x)


def test_fmc_masks_the_head_inputs_in_training():
    # Rate 1 zeroes every head input, so (BatchNorm on batch statistics)
    # every example gets the same head logits; rate 0 keeps them apart.
    data = step_data()
    masked = built(LFMA(fmc_probability=1.0))(data=data, training=True).logits["head1"]
    np.testing.assert_allclose(np.asarray(masked), np.asarray(masked)[:1].repeat(8, 0), atol=1e-5)
    kept = built(LFMA(fmc_probability=0.0))(data=data, training=True).logits["head1"]
    assert np.std(np.asarray(kept), axis=0).max() > 1e-3


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_fmc_probability_must_be_a_probability(bad):
    with pytest.raises(ValueError, match="fmc_probability"):
        LFMA(fmc_probability=bad)


# -- loss terms ------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [4.0, 1.0])
def test_each_term_and_the_ensemble_match_numpy(temperature):
    method = built(LFMA(temperature=temperature))
    data = step_data()
    out = method(data=data, training=False)
    head_logits = numpy_head_logits(method, data)
    expected, ensemble = numpy_lfma_terms(
        head_logits, data.student_logits, data.labels, temperature
    )
    assert set(out.losses) == {"kd", "head_kd", "ce", "head_ce"}
    for name, value in expected.items():
        np.testing.assert_allclose(float(out.losses[name]), value, rtol=1e-5, err_msg=name)
    for name, z in zip(["head1", "head2"], head_logits):
        np.testing.assert_allclose(np.asarray(out.logits[name]), z, rtol=1e-4, atol=1e-5)
    # The reported ensemble logits are T * log D_E: softmax(. / T) gives D_E back.
    np.testing.assert_allclose(
        np.exp(np_log_softmax(np.asarray(out.logits["ensemble"], "float64") / temperature)),
        ensemble, rtol=1e-5, atol=1e-7,
    )


def test_heads_grow_from_every_tap_but_the_last_unless_include_last():
    assert [h.name for h in built(LFMA()).heads] == ["head1", "head2"]
    method = built(LFMA(include_last=True))
    assert [h.name for h in method.heads] == ["head1", "head2", "head3"]
    data = step_data()
    out = method(data=data, training=False)
    expected, _ = numpy_lfma_terms(
        numpy_head_logits(method, data), data.student_logits, data.labels, 4.0
    )
    np.testing.assert_allclose(float(out.losses["head_ce"]), expected["head_ce"], rtol=1e-5)


def test_one_tap_without_include_last_is_a_clear_error():
    spec = TapSpec({"features": TAPS[-1:]}, {}, (8, NUM_CLASSES), None, (8, *IMAGE_SHAPE))
    with pytest.raises(ValueError, match="include_last=True"):
        LFMA().build(spec)


def test_the_ensemble_target_carries_no_gradient():
    method = built(LFMA())
    data = step_data()
    features = [tf.Variable(f) for f in data.student["features"]]
    logits = tf.Variable(data.student_logits)
    data.student = {"features": features}
    data.student_logits = logits
    with tf.GradientTape(persistent=True) as tape:
        out = method(data=data, training=True)
    # ensemble -> backbone reaches the backbone logits only, never the heads.
    heads = method.trainable_variables + features
    assert all(g is None for g in tape.gradient(out.losses["kd"], heads))
    assert tape.gradient(out.losses["kd"], logits) is not None
    # ensemble -> heads: the same gradients as against a constant target.
    with tf.GradientTape(persistent=True) as tape:
        out = method(data=data, training=False)
        constant = tf.constant(np.asarray(out.logits["ensemble"]))
        fixed = sum(
            kerakd.losses.kd_loss(out.logits[h], constant, 4.0) for h in ("head1", "head2")
        )
    got = tape.gradient(out.losses["head_kd"], method.trainable_variables)
    want = tape.gradient(fixed, method.trainable_variables)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-8)


# -- DSN -------------------------------------------------------------------------


def test_dsn_is_lfma_with_cross_entropy_only():
    lfma = built(LFMA())
    dsn = built(DSN())
    for a, b in zip(lfma.heads, dsn.heads):
        b.set_weights(a.get_weights())
    data = step_data()
    expected = lfma(data=data, training=False)
    got = dsn(data=data, training=False)
    assert set(got.losses) == {"ce", "head_ce"} and dsn.term_weights == {"ce": 1.0, "head_ce": 1.0}
    for name in ("ce", "head_ce"):
        np.testing.assert_allclose(float(got.losses[name]), float(expected.losses[name]), rtol=1e-6)
    assert set(got.logits) == {"head1", "head2", "ensemble"}
    assert dsn.fmc_probability == 0.0


@pytest.mark.parametrize("cls", [LFMA, DSN])
def test_config_round_trips(cls):
    method = cls(ce_weight=0.5, fmc_probability=0.1, include_last=True)
    again = cls.from_config(method.get_config())
    assert again.get_config() == method.get_config()
    assert again.term_weights == method.term_weights


def test_zero_weight_terms_are_not_computed():
    method = built(LFMA(head_kd_weight=0.0))
    assert set(method(data=step_data(), training=False).losses) == {"kd", "ce", "head_ce"}
    with pytest.raises(ValueError, match="at least one"):
        LFMA(kd_weight=0, head_kd_weight=0, ce_weight=0, head_ce_weight=0)


# -- with the Distiller ----------------------------------------------------------


def test_gradients_reach_student_and_heads_and_the_export_has_no_heads(student):
    fresh = len(kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE).weights)
    distiller = kerakd.Distiller(student, "lfma")
    distiller.build((8, *IMAGE_SHAPE))
    head_variables = distiller.method.trainable_variables
    assert len(head_variables) > 0
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in student.trainable_variables + head_variables
    }
    with tf.GradientTape() as tape:
        terms = distiller.compute_loss_terms(make_images(8), make_labels(8), training=True)
        total = sum(terms.values())
    gradients = tape.gradient(total, distiller.trainable_variables)
    missing = [v.path for v, g in zip(distiller.trainable_variables, gradients) if g is None]
    assert not missing
    # The student the user exports is the plain backbone.
    assert len(distiller.student.weights) == fresh
    assert not any("head" in v.path for v in distiller.student.weights)


def test_a_short_fit_reports_each_head_and_the_ensemble(student):
    distiller = kerakd.Distiller(student, "lfma")
    distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    logs = distiller.fit(make_dataset(n=16), epochs=1, verbose=0).history
    expected = {"loss", "kd", "head_kd", "ce", "head_ce", "accuracy",
                "head1_accuracy", "head2_accuracy", "ensemble_accuracy"}
    assert expected <= set(logs)
    assert all(np.isfinite(v[0]) for v in logs.values())


def test_fmc_in_backbone_masks_the_next_block_through_prepare_student(student):
    method = LFMA(fmc_probability=1.0, fmc_in_backbone=True)
    prepared = method.prepare_student(student)
    assert method.student_taps == {"features": ["stage1_fmc", "stage2_fmc", "stage3"]}
    images = make_images(8)
    # Shares the student's weights; the identity at inference.
    assert len(prepared.weights) == len(student.weights)
    np.testing.assert_allclose(
        np.asarray(prepared(images, training=False)), np.asarray(student(images, training=False)),
        rtol=1e-5, atol=1e-6,
    )
    # Rate 1 zeroes stage1 for the backbone too: every example looks alike.
    logits = np.asarray(prepared(images, training=True))
    np.testing.assert_allclose(logits, logits[:1].repeat(8, 0), atol=1e-4)
    distiller = kerakd.Distiller(prepared, method)
    distiller.build((8, *IMAGE_SHAPE))
    assert distiller._student_net.roles["features"] == ["stage1_fmc", "stage2_fmc", "stage3"]


def test_fmc_in_backbone_distiller_saves_and_loads(tmp_path, student):
    method = LFMA(fmc_in_backbone=True)
    distiller = kerakd.Distiller(method.prepare_student(student), method)
    distiller.compile(keras.optimizers.SGD(0.01))
    distiller.fit(make_dataset(n=8), epochs=1, verbose=0)
    distiller.save(tmp_path / "lfma.keras")
    restored = keras.models.load_model(tmp_path / "lfma.keras")
    assert restored.method.student_taps == method.student_taps
    images = make_images(4)
    np.testing.assert_allclose(restored.predict(images, verbose=0),
                               distiller.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    assert set(restored.student_features(images)) == {"stage1_fmc", "stage2_fmc", "stage3"}


def test_fmc_in_backbone_without_prepare_student_is_a_clear_error(student):
    with pytest.raises(ValueError, match="prepare_student"):
        kerakd.Distiller(student, LFMA(fmc_in_backbone=True)).build((8, *IMAGE_SHAPE))
