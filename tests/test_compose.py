"""Compositions (`get("a+b")`): terms summed with each method's weights,
shared terms kept once, taps namespaced per method."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd
from kerakd import losses
from kerakd.methods.base import StepData, TapSpec
from kerakd.methods.compose import Compose
from kerakd.methods.fitnet import FitNet

from conftest import make_dataset

B, K = 8, 5


def stages(channels, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(B, s, s, channels)).astype("float32") for s in (8, 4)]


def spec_and_step(method):
    """Every role of `method` reads the same two stage taps."""
    student, teacher = stages(4, 1), stages(6, 2)
    spec = TapSpec(
        student={r: [x.shape for x in student] for r in method.student_taps},
        teacher={r: [x.shape for x in teacher] for r in method.teacher_taps},
        student_logits=(B, K), teacher_logits=(B, K), image_shape=(B, 16, 16, 3),
    )
    rng = np.random.default_rng(3)
    data = StepData(
        images=None, labels=np.arange(B) % K,
        student={r: student for r in method.student_taps},
        student_logits=rng.normal(size=(B, K)).astype("float32"),
        teacher={r: teacher for r in method.teacher_taps},
        teacher_logits=rng.normal(size=(B, K)).astype("float32"),
        training=True,
    )
    return spec, data


def test_names_and_lists_compose_the_same_way():
    for method in (kerakd.methods.get("kd+at"), kerakd.methods.get(["kd", "at"])):
        assert isinstance(method, Compose)
        assert [m.name for m in method.components] == ["kd", "at"]
        assert method.student_taps == {"at_features": "stages"}
    assert not isinstance(kerakd.methods.get("kd"), Compose)


def test_kd_plus_at_reports_each_term_once_with_the_first_methods_weights():
    method = kerakd.methods.get("kd+at")
    spec, data = spec_and_step(method)
    method.build(spec)
    out = method(data=data)
    assert method.term_weights == {"ce": 0.1, "kd": 0.9, "at": 1000.0}
    (f_s, g_s), (f_t, g_t) = data.student["at_features"], data.teacher["at_features"]
    expected = {
        "ce": losses.cross_entropy(data.labels, data.student_logits),
        "kd": losses.kd_loss(data.student_logits, data.teacher_logits, 4.0),
        "at": losses.at_loss(f_s, f_t) + losses.at_loss(g_s, g_t),
    }
    assert set(out.losses) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(out.losses[name], value, rtol=1e-6)
    # The order decides which ce weight wins.
    reverse = kerakd.methods.get("at+kd")
    reverse.build(spec)
    assert reverse.term_weights == {"ce": 1.0, "at": 1000.0, "kd": 0.9}


def test_clashing_method_terms_are_kept_and_prefixed():
    method = Compose([FitNet(name="low", hint_stage=0), FitNet(name="high", hint_stage=1)])
    spec, data = spec_and_step(method)
    assert set(method.student_taps) == {"low_features", "high_features"}
    method.build(spec)
    out = method(data=data)
    assert set(out.losses) == {"ce", "hint", "high_hint"}
    assert method.term_weights == {"ce": 1.0, "hint": 100.0, "high_hint": 100.0}
    assert float(out.losses["hint"]) != float(out.losses["high_hint"])


def test_per_method_hyperparameters_and_errors():
    method = kerakd.methods.get("kd+at", at={"at_weight": 50.0})
    assert method.components[1].at_weight == 50.0
    with pytest.raises(ValueError, match="not in the composition"):
        kerakd.methods.get("kd+at", crd={"negatives": 4})
    with pytest.raises(ValueError, match="distinct names"):
        kerakd.methods.get("kd+kd")
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        kerakd.methods.get("kd+nope")


def test_kd_terms_at_different_temperatures_are_refused():
    method = kerakd.methods.get("kd+crd", kd={"temperature": 2.0}, crd={"queue": True})
    spec = TapSpec(
        student={"crd_features": [(B, 6)]}, teacher={"crd_features": [(B, 9)]},
        student_logits=(B, K), teacher_logits=(B, K), image_shape=(B, 16, 16, 3),
    )
    with pytest.raises(ValueError, match="different temperatures"):
        method.build(spec)


def test_config_round_trip_keeps_the_components():
    method = kerakd.methods.get("fitnet+crd", crd={"queue": True, "negatives": 64})
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(method))
    assert [m.get_config() for m in again.components] == [
        m.get_config() for m in method.components
    ]
    assert not again.needs_index and again.requires_teacher


def test_distiller_objective_is_the_weighted_sum_of_the_reported_terms(student, teacher):
    method = kerakd.methods.get("fitnet+crd", crd={"queue": True, "negatives": 16})
    distiller = kerakd.Distiller(student, method, teacher)
    distiller.compile(keras.optimizers.SGD(0.0))  # one step, nothing moves
    logs = distiller.fit(make_dataset(n=8), epochs=1, verbose=0).history
    assert set(method.term_weights) == {"ce", "hint", "kd", "crd"}
    total = sum(float(w) * logs[name][0] for name, w in method.term_weights.items())
    np.testing.assert_allclose(logs["loss"][0], total, rtol=1e-5)
    assert all(logs[name][0] > 0 for name in method.term_weights)


@pytest.mark.skipif("semckd" not in kerakd.methods.available(), reason="semckd not written yet")
def test_semckd_plus_crd_builds_one_method_with_both_terms():
    method = kerakd.methods.get("semckd+crd", crd={"queue": True})
    assert [m.name for m in method.components] == ["semckd", "crd"]
    assert "crd_features" in method.student_taps


def test_gradients_flow_to_every_components_parts():
    method = kerakd.methods.get("fitnet+vid")
    spec, data = spec_and_step(method)
    method.build(spec)
    with tf.GradientTape() as tape:
        out = method(data=data)
        total = sum(float(method.term_weights[n]) * v for n, v in out.losses.items())
    grads = tape.gradient(total, method.trainable_variables)
    assert len(grads) == len(method.components[0].trainable_variables) + len(
        method.components[1].trainable_variables
    )
    assert all(g is not None for g in grads)
