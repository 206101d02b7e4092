"""AID (docs/methods/aid.md): each source's term against NumPy, second-view forwards, gradients, fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd
from kerakd.methods.aid import AID, orthogonality
from kerakd.methods.base import StepData, TapSpec
from reference import (IMAGE_SHAPE, NUM_CLASSES, make_dataset, make_images, make_labels, np_ce,
                       np_kd, np_kl, np_log_softmax, numpy_branch)
from reference import randomize_weights as randomize

TAPS = [(8, 16, 16, 8), (8, 8, 8, 16), (8, 4, 4, 32)]
TEACHER_WIDTH = 24
SPEC = TapSpec(
    student={"features": TAPS},
    teacher={"penultimate": [(8, TEACHER_WIDTH)]},
    student_logits=(8, NUM_CLASSES),
    teacher_logits=(8, NUM_CLASSES),
    image_shape=(8, *IMAGE_SHAPE),
)


def built(method, spec=SPEC):
    method.build(spec)
    randomize(method, seed=3)
    return method


class Views:
    """`forward_student`/`forward_teacher` that return fixed second-view taps
    and record the images they were given."""

    def __init__(self, outputs):
        self.outputs, self.images = outputs, []

    def __call__(self, images):
        self.images.append(np.asarray(images))
        return self.outputs


def step_data(seed=0):
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=1.0):
        return (scale * rng.normal(size=shape)).astype("float32")

    def student_taps():
        return {"features": [normal(*s) for s in TAPS]}

    return StepData(
        images=make_images(8),
        labels=make_labels(8),
        student=student_taps(),
        student_logits=normal(8, NUM_CLASSES, scale=2),
        teacher={"penultimate": [normal(8, TEACHER_WIDTH)]},
        teacher_logits=normal(8, NUM_CLASSES, scale=3),
        forward_student=Views((student_taps(), normal(8, NUM_CLASSES))),
        forward_teacher=Views(
            ({"penultimate": [normal(8, TEACHER_WIDTH)]}, normal(8, NUM_CLASSES))
        ),
    )


# -- NumPy reference of docs/methods/aid.md -------------------------------------------------------


def standardize(z):
    return (z - z.mean(-1, keepdims=True)) / (z.std(-1, keepdims=True) + 1e-7)


def cosine(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T


def np_orth(w):
    return sum(
        np.linalg.norm(g - np.eye(len(g))) for g in (w.T @ w, w @ w.T)
    )


def numpy_aid_terms(method, data, normalize):
    n = standardize if normalize else (lambda z: z)
    stride_plan = {0: [2, 2], 1: [2], 2: [1]}

    def branch(stage, taps):
        model = method.branches[method.stages.index(stage)]
        g = numpy_branch(model, model.name, taps[stage], stride_plan[stage])
        kernel, bias = model.get_layer(f"{model.name}_classifier").get_weights()
        (adapter,) = model.get_layer(f"{model.name}_adapter").get_weights()
        return g, g @ kernel + bias, g @ adapter, adapter

    def project(g):
        w1, b1 = method.projection.get_layer("dense1").get_weights()
        w2, b2 = method.projection.get_layer("dense2").get_weights()
        return np.maximum(g @ w1 + b1, 0) @ w2 + b2

    outs = [branch(s, data.student["features"]) for s in method.stages]
    h_t, z_t = data.teacher["penultimate"][0], data.teacher_logits
    view_taps = data.forward_student.outputs[0]["features"]
    view_h_t = data.forward_teacher.outputs[0]["penultimate"][0]
    a_t = cosine(view_h_t, h_t)
    a_s = cosine(project(branch(method.stages[-1], view_taps)[0]), project(outs[-1][0]))
    tau = method.relation_temperature
    return {
        "ce": np_ce(data.student_logits, data.labels),
        "kd": np_kd(n(data.student_logits), n(z_t), 4.0),
        "feat": sum(np.mean((a - h_t) ** 2) for _, _, a, _ in outs),
        "logit": sum(np_kd(n(z), n(z_t), 4.0) for _, z, _, _ in outs),
        "task": sum(np_ce(z, data.labels) for _, z, _, _ in outs),
        "relation": tau * tau * np_kl(np.exp(np_log_softmax(a_t / tau)), np_log_softmax(a_s / tau)),
        "orth": sum(np_orth(w) for _, _, _, w in outs),
    }, [z for _, z, _, _ in outs]


# -- pieces ------------------------------------------------------------------------


def test_logit_standardisation_gives_zero_mean_and_unit_std_per_row():
    z = 3 * np.random.default_rng(0).normal(size=(8, 100)).astype("float32") + 5
    n = np.asarray(kerakd.losses.standardize_logits(z, unbiased=False))  # AID's form
    np.testing.assert_allclose(n.mean(axis=-1), 0, atol=1e-5)
    np.testing.assert_allclose(n.std(axis=-1), 1, rtol=1e-5)


def test_orthogonality_is_zero_for_an_orthogonal_square_kernel_only():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert float(orthogonality(q.astype("float32"))) < 1e-5
    w = rng.normal(size=(16, 16)).astype("float32")
    assert float(orthogonality(w)) > 1
    wide = rng.normal(size=(8, 24)).astype("float32")
    np.testing.assert_allclose(
        float(orthogonality(wide)), np_orth(wide.astype("float64")), rtol=1e-5
    )
    # No NaN gradient at the minimum.
    q = tf.Variable(q.astype("float32"))
    with tf.GradientTape() as tape:
        value = orthogonality(q)
    assert np.all(np.isfinite(tape.gradient(value, q).numpy()))


def test_second_view_is_a_random_quarter_turn_or_half_turn_for_non_square():
    method = AID()
    images = make_images(8)
    seen = set()
    for _ in range(12):
        view = np.asarray(method.second_view(images))
        turns = [k for k in (1, 2, 3) if np.array_equal(view, np.rot90(images, k, axes=(1, 2)))]
        assert len(turns) == 1
        seen.add(turns[0])
    assert seen == {1, 2, 3}
    wide = make_images(8, shape=(16, 12, 3))
    np.testing.assert_array_equal(
        np.asarray(method.second_view(wide)), np.rot90(wide, 2, axes=(1, 2))
    )


# -- loss terms --------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("stages", [(0, 1), (1, 2)])
def test_each_term_matches_numpy(normalize, stages):
    method = built(AID(stages=stages, normalize_logits=normalize))
    data = step_data()
    out = method(data=data, training=False)
    expected, branch_logits = numpy_aid_terms(method, data, normalize)
    assert set(out.losses) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(float(out.losses[name]), value, rtol=1e-5, err_msg=name)
    assert list(out.logits) == [f"branch{s + 1}" for s in stages]
    for z_got, z_want in zip(out.logits.values(), branch_logits):
        np.testing.assert_allclose(np.asarray(z_got), z_want, rtol=1e-4, atol=1e-5)
    # The second view went through both networks: the batch, rotated.
    (view,) = data.forward_teacher.images
    np.testing.assert_array_equal(view, data.forward_student.images[0])
    assert any(np.array_equal(view, np.rot90(data.images, k, axes=(1, 2))) for k in (1, 2, 3))


def test_relation_weight_zero_skips_the_second_view():
    data = step_data()
    out = built(AID(relation_weight=0.0))(data=data, training=True)
    assert "relation" not in out.losses
    assert built(AID(relation_weight=0.0)).projection is None
    assert data.forward_teacher.images == [] and data.forward_student.images == []
    data = step_data()
    built(AID())(data=data, training=True)
    assert len(data.forward_teacher.images) == len(data.forward_student.images) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"stages": (0, 0)}, "distinct"),
        ({"stages": ()}, "distinct"),
        ({"stages": (-1,)}, "distinct"),
        ({"relation_weight": -1.0}, "relation_weight"),
        ({"relation_temperature": 0.0}, "relation_temperature"),
        ({"branch_builder": "nope"}, "separable"),
    ],
)
def test_bad_hyperparameters_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AID(**kwargs)


def test_build_errors_name_the_fix():
    with pytest.raises(ValueError, match="has 3 stage taps"):
        AID(stages=(1, 3)).build(SPEC)
    spec = TapSpec(SPEC.student, {"penultimate": [(8, 4, 4, 24)]}, SPEC.student_logits,
                   SPEC.teacher_logits, SPEC.image_shape)
    with pytest.raises(ValueError, match="pooled penultimate"):
        AID().build(spec)


def test_config_round_trips():
    method = AID(stages=(1, 2), relation_weight=0.0, normalize_logits=False)
    again = AID.from_config(method.get_config())
    assert again.get_config() == method.get_config()
    assert again.stages == (1, 2) and "relation" not in again.term_weights


# -- with the Distiller ------------------------------------------------------------------


def test_gradients_reach_student_branches_adapters_and_projection_never_the_teacher(
    teacher, student
):
    distiller = kerakd.Distiller(student, "aid", teacher)
    distiller.build((8, *IMAGE_SHAPE))
    method = distiller.method
    parts = {
        "branches": [v for b in method.branches for v in b.trainable_variables],
        "adapters": [a.kernel for a in method.adapters],
        "projection": method.projection.trainable_variables,
    }
    assert all(parts.values())
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in student.trainable_variables + method.trainable_variables
    }
    with tf.GradientTape() as tape:
        terms = distiller.compute_loss_terms(make_images(8), make_labels(8), training=True)
        total = sum(terms.values())
    teacher_ids = {id(v) for v in teacher.weights}
    assert not {id(v) for v in tape.watched_variables()} & teacher_ids
    gradients = tape.gradient(total, distiller.trainable_variables)
    missing = [v.path for v, g in zip(distiller.trainable_variables, gradients) if g is None]
    assert not missing
    # The exported student is the plain student.
    fresh = kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
    assert len(distiller.student.weights) == len(fresh.weights)
    assert not any("branch" in v.path or "projection" in v.path for v in distiller.student.weights)


class CountCalls(keras.layers.Layer):
    """Passes its input through and counts how often it runs."""

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x):
        self.calls.assign_add(1.0)
        return x


def counting_teacher():
    inputs = keras.Input(IMAGE_SHAPE)
    counter = CountCalls(name="count")
    x = keras.layers.Conv2D(TEACHER_WIDTH, 3, strides=4)(counter(inputs))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x)), counter


@pytest.mark.parametrize("relation_weight, forwards_per_step", [(0.0, 1), (10.0, 2)])
def test_teacher_forwards_per_step_and_a_short_fit(student, relation_weight, forwards_per_step):
    teacher, counter = counting_teacher()
    distiller = kerakd.Distiller(student, AID(relation_weight=relation_weight), teacher)
    distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    distiller.build((8, *IMAGE_SHAPE))
    counter.calls.assign(0.0)
    logs = distiller.fit(make_dataset(n=16), epochs=1, verbose=0).history
    assert float(counter.calls.numpy()) == 2 * forwards_per_step
    expected = {"loss", "ce", "kd", "feat", "logit", "task", "orth",
                "accuracy", "branch1_accuracy", "branch2_accuracy"}
    assert expected <= set(logs)
    assert ("relation" in logs) == bool(relation_weight)
    assert all(np.isfinite(v[0]) for v in logs.values())
