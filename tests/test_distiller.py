"""The Distiller: frozen teacher, gradient routing, training, saving, errors."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd
from reference import IMAGE_SHAPE, NUM_CLASSES, make_dataset, make_images, make_labels
from kerakd.methods.base import StepData


def compiled(distiller, lr=0.05):
    distiller.compile(keras.optimizers.SGD(lr, momentum=0.9))
    return distiller


def variable_ids(variables):
    return {id(v) for v in variables}


@pytest.mark.parametrize("method", ["kd", "at", "fitnet"])
def test_teacher_weights_and_bn_statistics_are_bit_identical_after_fit(teacher, student, method):
    before = [v.numpy().copy() for v in teacher.weights]
    distiller = compiled(kerakd.Distiller(student, method, teacher))
    distiller.fit(make_dataset(), epochs=1, verbose=0)
    moving = [v for v in teacher.weights if "moving" in v.path]
    assert moving, "the teacher has BatchNorm statistics to check"
    for v, b in zip(teacher.weights, before):
        np.testing.assert_array_equal(v.numpy(), b, err_msg=v.path)


@pytest.mark.parametrize("method", ["kd", "at", "fitnet", "semckd", "afd"])
def test_gradients_reach_the_student_and_method_only(teacher, student, method):
    distiller = kerakd.Distiller(student, method, teacher)
    distiller.build((8, *IMAGE_SHAPE))
    trainable = variable_ids(distiller.trainable_variables)
    expected = variable_ids(student.trainable_variables) | variable_ids(
        distiller.method.trainable_variables
    )
    assert trainable == expected
    assert not trainable & variable_ids(teacher.weights)

    images, labels = make_images(8), make_labels(8)
    with tf.GradientTape() as tape:
        total = sum(distiller.compute_loss_terms(images, labels, training=True).values())
    watched = variable_ids(tape.watched_variables())
    assert not watched & variable_ids(teacher.weights), "the teacher ran under the tape"
    gradients = tape.gradient(total, distiller.trainable_variables)
    # Every trainable variable gets a gradient (kernels, BN scales/offsets).
    missing = [v.path for v, g in zip(distiller.trainable_variables, gradients) if g is None]
    assert not missing


def test_method_variables_are_trained(teacher, student):
    distiller = compiled(kerakd.Distiller(student, "fitnet", teacher))
    distiller.build((8, *IMAGE_SHAPE))
    before = [v.numpy().copy() for v in distiller.method.trainable_variables]
    distiller.fit(make_dataset(n=16), epochs=1, verbose=0)
    after = distiller.method.trainable_variables
    assert before and all(not np.array_equal(b, a.numpy()) for b, a in zip(before, after))


@pytest.mark.parametrize("method", ["kd", "at", "fitnet"])
def test_a_30_step_fit_lowers_the_loss(teacher, student, method):
    # A learnable problem: the class shifts the image mean.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, 240).astype("int32")
    images = rng.normal(size=(240, *IMAGE_SHAPE)).astype("float32") * 0.3
    images += labels[:, None, None, None] * 0.5
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8, drop_remainder=True)
    distiller = compiled(kerakd.Distiller(student, method, teacher), lr=0.02)
    distiller.build((8, *IMAGE_SHAPE))
    # The distillation objective on training data, before and after; with batch
    # statistics (30 steps do not settle BatchNorm's moving averages).
    def objective():
        terms = distiller.compute_loss_terms(images[:64], labels[:64], training=True)
        return float(sum(terms.values()))

    before = objective()
    history = distiller.fit(ds, epochs=1, verbose=0)
    assert distiller.optimizer.iterations.numpy() == 30
    assert objective() < before
    assert np.isfinite(history.history["loss"][0])


def test_every_term_is_reported(teacher, student):
    distiller = compiled(kerakd.Distiller(student, "kd", teacher))
    logs = distiller.fit(make_dataset(), epochs=1, verbose=0, validation_data=make_dataset()).history
    assert {"loss", "ce", "kd", "accuracy", "val_loss", "val_ce", "val_accuracy"} <= set(logs)
    # `loss` is the weighted sum of the terms the method returned.
    np.testing.assert_allclose(
        logs["loss"][0], 0.1 * logs["ce"][0] + 0.9 * logs["kd"][0], rtol=1e-4
    )


def test_weight_decay_is_coupled_l2_on_every_trainable_variable(student):
    # With plain SGD (no momentum) and a zero-gradient loss, one step moves
    # each variable by -lr * wd * v, as PyTorch's SGD(weight_decay=wd) does.
    class Zero(kerakd.methods.Method):
        requires_teacher = False

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.term_weights = {"zero": 1.0}

        def call(self, data, training=False):
            return kerakd.methods.MethodOutput(losses={"zero": 0.0 * keras.ops.sum(data.student_logits)})

    distiller = kerakd.Distiller(student, Zero(), weight_decay=0.1)
    distiller.compile(keras.optimizers.SGD(0.5))
    distiller.build((8, *IMAGE_SHAPE))
    before = [v.numpy().copy() for v in distiller.trainable_variables]
    distiller.train_on_batch(make_images(8), make_labels(8))
    for b, v in zip(before, distiller.trainable_variables):
        np.testing.assert_allclose(v.numpy(), b * (1 - 0.5 * 0.1), rtol=1e-5, atol=1e-7)


def test_distiller_round_trips_through_a_keras_file(tmp_path, teacher, student):
    distiller = compiled(kerakd.Distiller(student, kerakd.methods.get("fitnet", hint_weight=10.0), teacher))
    distiller.fit(make_dataset(n=16), epochs=1, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, kerakd.Distiller)
    assert restored.method.hint_weight == 10.0
    images = make_images(4)
    np.testing.assert_allclose(restored.predict(images, verbose=0), distiller.predict(images, verbose=0), rtol=1e-5)
    for a, b in zip(restored.method.weights, distiller.method.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(restored.teacher.weights, distiller.teacher.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The restored distiller trains on.
    compiled(restored).fit(make_dataset(n=16), epochs=1, verbose=0)


@pytest.mark.slow
def test_student_loads_in_a_process_without_kerakd(tmp_path, teacher, student):
    distiller = compiled(kerakd.Distiller(student, "kd", teacher))
    distiller.fit(make_dataset(n=16), epochs=1, verbose=0)
    path = tmp_path / "student.keras"
    kerakd.models.core_keras(distiller.student).save(path)
    images = make_images(2)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", distiller.student.predict(images, verbose=0))
    script = (
        "import sys, numpy as np, keras\n"
        f"m = keras.models.load_model(r'{path}')\n"
        "assert 'kerakd' not in sys.modules\n"
        f"np.testing.assert_allclose(m.predict(np.load(r'{tmp_path / 'x.npy'}'), verbose=0), "
        f"np.load(r'{tmp_path / 'y.npy'}'), rtol=1e-5)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok" in result.stdout


def test_student_is_plain_and_method_parts_are_not_in_it(teacher, student):
    distiller = kerakd.Distiller(student, "fitnet", teacher)
    distiller.build((8, *IMAGE_SHAPE))
    distiller.build((8, *IMAGE_SHAPE))  # building again is harmless
    assert distiller.student is student
    assert not variable_ids(distiller.method.weights) & variable_ids(student.weights)


def test_plain_training_needs_no_teacher(student):
    distiller = compiled(kerakd.Distiller(student, "none"))
    logs = distiller.fit(make_dataset(), epochs=1, verbose=0, validation_data=make_dataset()).history
    assert set(logs) == {"loss", "ce", "accuracy", "val_loss", "val_ce", "val_accuracy"}
    # Validation `ce` is the student's cross-entropy, not a stale tracker.
    assert logs["val_ce"][0] > 0 and logs["val_ce"][0] == logs["val_loss"][0]


def test_errors_name_the_problem(teacher, student):
    with pytest.raises(ValueError, match="pass teacher="):
        kerakd.Distiller(student, "kd")
    with pytest.raises(ValueError, match="do not pass teacher="):
        kerakd.Distiller(student, "none", teacher)
    with pytest.raises(ValueError, match="Unknown method 'kdd'.*Did you mean.*'kd'"):
        kerakd.Distiller(student, "kdd", teacher)
    other = kerakd.models.get("resnet8", NUM_CLASSES + 1, IMAGE_SHAPE)
    with pytest.raises(ValueError, match="classes"):
        kerakd.Distiller(student, "kd", other)
    wider = kerakd.models.get("resnet8", NUM_CLASSES, (24, 24, 3))
    with pytest.raises(ValueError, match="input shape"):
        kerakd.Distiller(student, "kd", wider)
    with pytest.raises(ValueError, match=r"hint_weight.*>= 0"):
        kerakd.methods.get("fitnet", hint_weight=-1.0)
    with pytest.raises(ValueError, match=r"temperature.*> 0"):
        kerakd.methods.get("kd", temperature=0.0)


def test_softmax_output_is_rejected(teacher):
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    probs = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, activation="softmax")(x))
    with pytest.raises(ValueError, match="softmax.*logits"):
        kerakd.Distiller(probs, "kd", teacher)


def test_at_rejects_unpaired_taps(teacher, student):
    distiller = kerakd.Distiller(student, "at", teacher, student_taps=["stage1", "stage2"])
    with pytest.raises(ValueError, match="student has 2 taps and the teacher 3"):
        distiller.build((8, *IMAGE_SHAPE))


def test_method_sees_taps_by_role_in_order(teacher, student):
    seen = {}

    class Probe(kerakd.methods.Method):
        student_taps = {"features": "stages", "embedding": "penultimate"}
        teacher_taps = {"features": ["stage3"]}

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.term_weights = {"zero": 1.0}

        def call(self, data: StepData, training=False):
            seen.update({r: [t.shape for t in v] for r, v in data.student.items()})
            seen["teacher"] = [t.shape for t in data.teacher["features"]]
            return kerakd.methods.MethodOutput(losses={"zero": keras.ops.mean(data.student_logits) * 0})

    distiller = kerakd.Distiller(student, Probe(), teacher)
    distiller.build((8, *IMAGE_SHAPE))
    assert [tuple(s) for s in seen["features"]] == [(8, 16, 16, 16), (8, 8, 8, 32), (8, 4, 4, 64)]
    assert [tuple(s) for s in seen["embedding"]] == [(8, 64)]
    assert [tuple(s) for s in seen["teacher"]] == [(8, 4, 4, 256)]


def test_features_of_the_tapped_layers_by_name(teacher, student):
    distiller = kerakd.Distiller(student, "at", teacher)
    images = make_images(4)
    features = distiller.student_features(images)
    assert list(features) == ["stage1", "stage2", "stage3"]
    reference = keras.Model(student.inputs, student.get_layer("stage2").output)
    np.testing.assert_allclose(features["stage2"], reference(images, training=False), rtol=1e-5)
    assert list(distiller.teacher_features(images)) == ["stage1", "stage2", "stage3"]
    assert kerakd.Distiller(student, "none").teacher_features(images) == {}


def test_clip_grad_norm_clips_the_loss_gradient_then_adds_weight_decay(student):
    clip, decay, lr = 0.05, 0.01, 0.1
    distiller = kerakd.Distiller(student, "none", weight_decay=decay, clip_grad_norm=clip)
    distiller.compile(keras.optimizers.SGD(lr))
    images, labels = make_images(8), make_labels(8)
    distiller.build((8, *IMAGE_SHAPE))
    variables = distiller.trainable_variables
    start = [v.numpy().astype("float64") for v in variables]
    with tf.GradientTape() as tape:
        total = sum(distiller.compute_loss_terms(images, labels, training=True).values())
    gradients = [g.numpy().astype("float64") for g in tape.gradient(total, variables)]
    norm = np.sqrt(sum(np.sum(g ** 2) for g in gradients))
    assert norm > 2 * clip, "the clipping must act for the check to mean anything"
    distiller.train_on_batch(images, labels)
    for v, w, g in zip(variables, start, gradients):
        expected = w - lr * (g * clip / norm + decay * w)
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-4, atol=1e-6, err_msg=v.path)


def test_clip_grad_norm_must_not_be_negative(student):
    with pytest.raises(ValueError, match="clip_grad_norm"):
        kerakd.Distiller(student, "none", clip_grad_norm=-1.0)


# -- oversized method parts ---------------------------------------------------

def tiny_net(name, width):
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.Conv2D(2, 3, padding="same", name=f"{name}_conv")(inputs)
    x = keras.layers.ReLU(name="stage1")(x)
    x = keras.layers.Conv2D(width, 1, name=f"{name}_wide")(x)
    x = keras.layers.ReLU(name="stage2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x), name=name)


def test_a_method_ten_times_the_student_warns_once_naming_taps_and_counts():
    student, teacher = tiny_net("s", 2), tiny_net("t", 512)
    distiller = kerakd.Distiller(student, "fitnet", teacher)
    method_count, student_count = 2 * 512 + 2 * 512, 56 + 6 + 15  # conv1x1 + BN scale/offset
    assert sum(int(np.prod(v.shape)) for v in student.trainable_weights) == student_count
    with pytest.warns(UserWarning) as record:
        distiller.build((8, *IMAGE_SHAPE))
    messages = [str(w.message) for w in record if "trainable parameters" in str(w.message)]
    assert len(messages) == 1
    message = messages[0]
    assert f"{method_count:,}" in message and f"student's {student_count:,}" in message
    assert "student taps: stage1 (2 channels), stage2 (2 channels)" in message
    assert "teacher taps: stage1 (2 channels), stage2 (512 channels)" in message
    assert "student_taps=" in message and "--student_taps/--teacher_taps" in message
    distiller.build((8, *IMAGE_SHAPE))  # built: no second warning


def test_no_size_warning_for_the_zoo_resnet8_with_fitnet(teacher, student):
    import warnings

    distiller = kerakd.Distiller(student, "fitnet", teacher)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*trainable parameters")
        distiller.build((8, *IMAGE_SHAPE))


def test_compute_loss_terms_builds_an_unbuilt_distiller_for_its_batch(teacher, student):
    distiller = kerakd.Distiller(student, "fitnet", teacher)
    assert not distiller.built
    images, labels = make_images(8), make_labels(8)
    terms = distiller.compute_loss_terms(images, labels)
    assert distiller.built and distiller.method.built
    assert set(terms) == set(distiller.method.term_weights)
    # Built once: a second call (or a fit) uses the same method variables.
    weights = [id(v) for v in distiller.method.weights]
    again = distiller.compute_loss_terms(images, labels)
    assert [id(v) for v in distiller.method.weights] == weights
    for name in terms:
        np.testing.assert_allclose(again[name], terms[name], rtol=1e-6)
