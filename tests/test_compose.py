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
from kerakd.methods.lfma import LFMA

from method_harness import seed_generators
from reference import make_dataset

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
    for method in (kerakd.methods.get("fitnet+at"), kerakd.methods.get(["fitnet", "at"])):
        assert isinstance(method, Compose)
        assert [m.name for m in method.components] == ["fitnet", "at"]
        assert method.student_taps == {"fitnet_features": "stages", "at_features": "stages"}
    assert not isinstance(kerakd.methods.get("kd"), Compose)


def test_kd_plus_at_keeps_every_term_under_its_methods_name():
    method = kerakd.methods.get("kd+at", at={"ce_weight": 0.1})
    spec, data = spec_and_step(method)
    method.build(spec)
    out = method(data=data)
    assert method.term_weights == {"ce": 0.1, "kd/kd": 0.9, "at/at": 1000.0}
    (f_s, g_s), (f_t, g_t) = data.student["at_features"], data.teacher["at_features"]
    expected = {
        "ce": losses.cross_entropy(data.labels, data.student_logits),
        "kd/kd": losses.kd_loss(data.student_logits, data.teacher_logits, 4.0),
        "at/at": losses.at_loss(f_s, f_t) + losses.at_loss(g_s, g_t),
    }
    assert set(out.losses) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(out.losses[name], value, rtol=1e-6)


def test_a_shared_ce_of_different_weights_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"\(kd: 0.1, at: 1\).*kd=\{'ce_weight': 1\}.*--kd_ce_weight=1"):
        kerakd.methods.get("kd+at")


def test_same_named_terms_of_two_methods_are_both_kept():
    method = Compose([FitNet(name="low", stage=0), FitNet(name="high", stage=1)])
    spec, data = spec_and_step(method)
    assert set(method.student_taps) == {"low_features", "high_features"}
    method.build(spec)
    out = method(data=data)
    assert set(out.losses) == {"ce", "low/hint", "high/hint"}
    assert method.term_weights == {"ce": 1.0, "low/hint": 100.0, "high/hint": 100.0}
    assert float(out.losses["low/hint"]) != float(out.losses["high/hint"])


def test_per_method_hyperparameters_and_errors():
    method = kerakd.methods.get("fitnet+at", at={"at_weight": 50.0})
    assert method.components[1].at_weight == 50.0
    with pytest.raises(ValueError, match="not in the composition"):
        kerakd.methods.get("kd+at", crd={"negatives": 4})
    with pytest.raises(ValueError, match="distinct names"):
        kerakd.methods.get("kd+kd")
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        kerakd.methods.get("kd+nope")


def test_kd_terms_at_different_temperatures_are_two_terms():
    method = kerakd.methods.get("kd+crd", kd={"temperature": 2.0, "ce_weight": 1.0},
                                crd={"queue": True})
    method.build(TapSpec(
        student={"crd_features": [(B, 6)]}, teacher={"crd_features": [(B, 9)]},
        student_logits=(B, K), teacher_logits=(B, K), image_shape=(B, 16, 16, 3),
    ))
    assert {"ce", "kd/kd", "crd/kd", "crd/crd"} == set(method.term_weights)


def test_two_methods_that_rewrite_the_student_are_refused():
    with pytest.raises(ValueError, match="rewrite the student"):
        Compose([LFMA(name="a", fmc_in_backbone=True), LFMA(name="b", fmc_in_backbone=True)])


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
    assert set(method.term_weights) == {"ce", "fitnet/hint", "crd/kd", "crd/crd"}
    total = sum(float(w) * logs[name][0] for name, w in method.term_weights.items())
    np.testing.assert_allclose(logs["loss"][0], total, rtol=1e-5)
    assert all(logs[name][0] > 0 for name in method.term_weights)


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


# -- every pair of registered methods ----------------------------------------

METHODS = kerakd.methods.available()
PAIRS = [(a, b) for i, a in enumerate(METHODS) for b in METHODS[i + 1:]]
# One `ce` weight for all (KD's default is 0.1), and what CRD cannot run without.
HPARAMS = {"kd": {"ce_weight": 1.0}, "crd": {"num_data": 8}, "ctkd": {"ce_weight": 1.0},
           "mlkd": {"ce_weight": 1.0}}
SHAPE, BATCH = (16, 16, 3), 8


@pytest.fixture(scope="module")
def parts():
    """Each method alone, built on one student and teacher: its distiller,
    weights, random-generator states, terms on one batch (inference), and
    its networks' taps and logits on that batch (computed once, shared by
    the 18 pairs each method is in)."""
    keras.utils.set_random_seed(0)
    student = kerakd.models.get("resnet8", K, SHAPE)
    teacher = kerakd.models.get("wrn_16_1", K, SHAPE)
    rng = np.random.default_rng(0)
    x = {"images": rng.normal(size=(BATCH, *SHAPE)).astype("float32"),
         "index": np.arange(BATCH, dtype="int64"),
         # Its own generator: the other arrays stay what they were.
         "strong_images": np.random.default_rng(1).normal(
             size=(BATCH, *SHAPE)).astype("float32")}
    y = rng.integers(0, K, BATCH).astype("int32")
    cache = {}

    def part(name):
        if name not in cache:
            # Named as a composition names its components (`none` is `plain` alone).
            method = kerakd.methods.registry.factory(name)(name=name, **HPARAMS.get(name, {}))
            distiller = kerakd.Distiller(student, method, teacher if method.requires_teacher else None)
            distiller.build((BATCH, *SHAPE))
            states = [g.state.numpy() for g in seed_generators(method)]
            terms = {k: float(v) for k, v in distiller.compute_loss_terms(x, y).items()}
            s_out = distiller._student_net(x["images"], training=False)
            t_out = (distiller._teacher_net.frozen(x["images"])
                     if distiller._teacher_net is not None else None)
            cache[name] = (distiller, method.get_weights(), states, terms, (s_out, t_out))
        return cache[name]

    return part, x, y


def composed_step(names, part, x, y):
    """The composition's StepData from the parts' own networks: each part's
    taps under the composition's role names (`<method>_<role>`)."""
    images = x["images"]
    student_taps, teacher_taps = {}, {}
    student_logits = teacher_logits = None
    nets = {}
    for name in names:
        distiller = part(name)[0]
        (s_taps, student_logits), teacher_out = part(name)[4]
        student_taps.update({f"{name}_{r}": v for r, v in s_taps.items()})
        nets[name] = distiller
        if teacher_out is not None:
            t_taps, teacher_logits = teacher_out
            teacher_taps.update({f"{name}_{r}": v for r, v in t_taps.items()})

    def forward(side):
        def call(view):
            taps, logits = {}, None
            for name, distiller in nets.items():
                net = distiller._student_net if side == "student" else distiller._teacher_net
                if net is None:
                    continue
                t, logits = net(view, training=False)
                taps.update({f"{name}_{r}": v for r, v in t.items()})
            return taps, logits
        return call

    data = StepData(images=images, labels=y, student=student_taps, student_logits=student_logits,
                    teacher=teacher_taps, teacher_logits=teacher_logits, training=False,
                    forward_student=forward("student"), forward_teacher=forward("teacher"),
                    index=x["index"], strong_images=x["strong_images"])
    spec = TapSpec(
        student={r: [tuple(t.shape) for t in v] for r, v in student_taps.items()},
        teacher={r: [tuple(t.shape) for t in v] for r, v in teacher_taps.items()},
        student_logits=tuple(student_logits.shape),
        teacher_logits=None if teacher_logits is None else tuple(teacher_logits.shape),
        image_shape=(BATCH, *SHAPE),
        student_tap_names={f"{n}_{r}": v for n in names
                           for r, v in nets[n]._student_net.roles.items()},
        teacher_tap_names={f"{n}_{r}": v for n in names if nets[n]._teacher_net is not None
                           for r, v in nets[n]._teacher_net.roles.items()},
    )
    return spec, data


def as_built(method, seen):
    """Stands in for the `build` of `method`, already built alone: records the
    spec the composition hands it and checks that it is the spec `method`
    was built from (so building it again would build the same parts)."""
    own = method.spec

    def build(spec):
        seen.append(method.name)
        assert {r: [tuple(s) for s in v] for r, v in spec.student.items()} == own.student
        assert {r: [tuple(s) for s in v] for r, v in spec.teacher.items()} == own.teacher
        assert spec.student_tap_names == own.student_tap_names
        assert spec.teacher_tap_names == own.teacher_tap_names
        assert tuple(spec.image_shape) == tuple(own.image_shape)
        assert tuple(spec.student_logits) == tuple(own.student_logits)
        if method.requires_teacher:
            assert tuple(spec.teacher_logits) == tuple(own.teacher_logits)
    return build


@pytest.mark.slow
@pytest.mark.parametrize("first, second", PAIRS)
def test_a_composition_is_the_union_of_its_parts(parts, first, second):
    part, x, y = parts
    names = (first, second)
    composition = kerakd.methods.get(
        f"{first}+{second}", **{n: HPARAMS[n] for n in names if n in HPARAMS})
    # The registry's components are the standalone methods' configurations.
    alone = [part(name)[0].method for name in names]
    assert [m.get_config() for m in composition.components] == [m.get_config() for m in alone]
    # Building a method's parts costs seconds and is the same in every pair
    # (the spec checks in `as_built`), so the composition holds the parts
    # built alone: what it adds (routing taps by role, naming and weighting
    # terms, the shared `ce` once) is what each pair checks.
    composition = Compose(alone)
    spec, data = composed_step(names, part, x, y)
    seen, builds = [], [method.build for method in alone]  # Keras' build_wrappers
    for method in alone:
        method.build = as_built(method, seen)
    try:
        composition.build(spec)
    finally:
        for method, build in zip(alone, builds):
            method.build = build
    assert seen == list(names)
    expected = {}
    for component, name in zip(composition.components, names):
        _, weights, states, terms, _ = part(name)
        component.set_weights(weights)  # the standalone method's state ...
        for generator, state in zip(seed_generators(component), states):
            generator.state.assign(state)  # ... and its random draws
        expected.update({t if t == "ce" else f"{name}/{t}": v for t, v in terms.items()})
    out = composition(data=data, training=False)
    terms = {k: float(composition.term_weights[k]) * float(v) for k, v in out.losses.items()}
    assert set(terms) == set(expected)
    np.testing.assert_allclose([terms[k] for k in sorted(terms)],
                               [expected[k] for k in sorted(terms)], rtol=1e-5, atol=1e-7)
    # The total counts the shared cross-entropy once.
    first_terms, second_terms = part(first)[3], part(second)[3]
    shared = first_terms.get("ce", 0.0) if "ce" in second_terms else 0.0
    assert sum(terms.values()) == pytest.approx(
        sum(first_terms.values()) + sum(second_terms.values()) - shared, rel=1e-5)
