"""Reliability of `kerakd-train`: exact resume, numerical faults, bad input,
teacher integrity. Runs are tiny; the runs that enable op
determinism (process-wide) go to subprocesses."""

import json
import os
import random
import re
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import app
from absl import flags

import kerakd
from reference import IMAGE_SHAPE, NUM_CLASSES, make_images, make_labels
from kerakd import flags as kerakd_flags
from kerakd import train
from kerakd.data import sources
from kerakd.callbacks import NonFiniteLossError
from reliability_run import FAULTY_METHODS

HELPER = os.path.join(os.path.dirname(__file__), "reliability_run.py")
TINY = ["--dataset=synthetic", "--student=resnet8", "--batch_size=16",
        "--steps_per_epoch=1", "--lr_milestones=", "--epochs=2"]
# Three epochs of three steps, every op deterministic.
EXACT = ["--method=none", "--dataset=synthetic", "--student=resnet8", "--batch_size=8",
         "--steps_per_epoch=3", "--epochs=3", "--lr_milestones=2", "--deterministic"]


@pytest.fixture
def faulty_methods(monkeypatch):
    for name, factory in FAULTY_METHODS.items():
        monkeypatch.setitem(kerakd.methods.registry._factories, name, factory)


def run_helper(args, faults=()):
    """`kerakd-train ARGS` in a subprocess, with `reliability_run` faults."""
    return subprocess.run(
        [sys.executable, HELPER, *faults, "--", *args], capture_output=True, text=True,
        timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def student_weights(model_dir):
    return keras.models.load_model(os.path.join(model_dir, "student.keras")).get_weights()


def committed_epoch(model_dir):
    return train.read_checkpoint(str(model_dir))["epoch"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """`(results, student weights)` of an uninterrupted EXACT run."""
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    done = run_helper([*EXACT, f"--model_dir={model_dir}"])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((model_dir / "results.json").read_text()), student_weights(model_dir)


@pytest.mark.slow
def test_killed_run_and_crashed_save_resume_exactly(uninterrupted, tmp_path):
    args = [*EXACT, f"--model_dir={tmp_path}"]
    batch = random.randint(1, 3)  # a random point of epoch 2 (of 3)
    killed = run_helper(args, [f"--kill_at=2,{batch}"])
    assert killed.returncode == -signal.SIGKILL, (batch, killed.stderr[-3000:])
    assert committed_epoch(tmp_path) == 1

    # Resumed, it dies saving epoch 3: half a file written, then an error.
    crashed = run_helper(args, ["--crash_saving_epoch=3"])
    assert crashed.returncode != 0 and "simulated crash" in crashed.stderr
    assert "resuming" in crashed.stdout and "after epoch 1" in crashed.stdout
    assert committed_epoch(tmp_path) == 2, "the previous checkpoint must stay"

    resumed = run_helper(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["resumed_from_epoch"] == 2
    # The half-written file is gone; only the last checkpoint is left.
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "checkpoint.json", "epoch-3.random.npz", "epoch-3.weights.h5"]
    reference, reference_weights = uninterrupted
    assert len(results["history"]) == 3
    assert results["history"] == reference["history"], f"killed at batch {batch}"
    assert results["best_epoch"] == reference["best_epoch"]
    for got, expected in zip(student_weights(tmp_path), reference_weights, strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


EXACT_RESUME = os.path.join(os.path.dirname(__file__), "exact_resume_run.py")
# A killed run resumes exactly when everything a step reads is in the
# checkpoint. For most methods that is their weights (and the student's and
# the optimizer's), which `test_killed_run_and_crashed_save_resume_exactly`
# covers end to end, and every method's variables are checked to be in the
# checkpoint in process (below). The subprocess runs (~20 s a method) are for
# the methods with more: random generators (CRD's negatives, LFMA's cutout,
# AID's rotations), state set by a callback each epoch (CTKD's curriculum,
# DKD's warm-up), a second data view (MLKD's strong view); and KD, stateless,
# as the reference. `test_every_other_method_keeps_all_its_state_in_the_checkpoint`
# fails for a method that gains such state without being listed here.
RESUMED_IN_A_SUBPROCESS = ["kd", "crd", "lfma", "aid", "ctkd", "dkd", "mlkd"]
# Methods of a resumed method's class, whose state is that method's: DSN is
# LFMA with the cutout off (its generator is restored as LFMA's is).
RESUMED_AS = {"dsn": "lfma"}
# Two groups, so that two test workers share the runs.
METHOD_GROUPS = [RESUMED_IN_A_SUBPROCESS[0::2], RESUMED_IN_A_SUBPROCESS[1::2]]


@pytest.mark.slow
@pytest.mark.parametrize("group", range(len(METHOD_GROUPS)))
def test_stateful_methods_resume_exactly_after_a_kill(group, tmp_path):
    # Random generators are in the checkpoint too: a resumed run draws what
    # an uninterrupted one does.
    out = tmp_path / "resume.json"
    names = METHOD_GROUPS[group]
    done = subprocess.run([sys.executable, EXACT_RESUME, str(out), *names], capture_output=True,
                          text=True, timeout=1500, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == set(names)
    for name, result in results.items():
        assert "error" not in result, (name, result)
        assert result["resumed_from_epoch"] == 1, name
        assert result["same_history"], name
        assert result["weight_diff"] == 0.0, (name, result)


# Callbacks that only draw (TensorBoard images): they set nothing a step reads.
DRAWING_CALLBACKS = ("LinkMatrixLogger", "AttentionMapImages")


def test_every_other_method_keeps_all_its_state_in_the_checkpoint(tmp_path):
    """What lets the methods outside `RESUMED_IN_A_SUBPROCESS` skip the
    subprocess run: no random generator, no callback that sets state, no
    second view, and every variable in what a checkpoint saves."""
    from kerakd.checkpoint import RunProgress

    assert set(RESUMED_IN_A_SUBPROCESS) <= set(kerakd.methods.available())
    student = kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
    teacher = kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
    hparams = {"crd": {"num_data": 16}}
    for name in kerakd.methods.available():
        method = kerakd.methods.get(name, **hparams.get(name, {}))
        trained = method.prepare_student(student)
        distiller = kerakd.Distiller(trained, method, teacher if method.requires_teacher else None)
        distiller.build((8, *IMAGE_SHAPE))
        progress = RunProgress(trained, str(tmp_path / name))
        progress.set_model(distiller)
        # The checkpoint: `save_weights` (weights) + the random-generator states.
        saved = {id(v) for v in distiller.weights} | {
            id(v) for v in progress._random_generators()}
        missing = [v.path for v in method.variables if id(v) not in saved]
        assert not missing, (name, missing)
        generators = [v for v in method.variables if id(v) not in {id(w) for w in method.weights}]
        callbacks = [type(c).__name__ for c in method.callbacks(
            str(tmp_path / "logs"), np.zeros((2, *IMAGE_SHAPE), "float32"))]
        stateful = (bool(generators) or method.needs_strong_view or method.needs_index
                    or any(c not in DRAWING_CALLBACKS for c in callbacks))
        if stateful and name in RESUMED_AS:
            assert isinstance(method, type(kerakd.methods.get(RESUMED_AS[name]))), name
        elif stateful:
            assert name in RESUMED_IN_A_SUBPROCESS, (
                f"{name} has state beyond its weights (generators {len(generators)}, "
                f"callbacks {callbacks}): resume it in the subprocess too")
        keras.backend.clear_session()


def test_the_seed_alone_fixes_the_initial_weights():
    def initial_weights():
        keras.utils.set_random_seed(7)
        return kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE).get_weights()

    first, again = initial_weights(), initial_weights()
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    # Convolutions of one shape start apart (one shared seed made them equal).
    kernels = [w for w in first if w.shape == (3, 3, 16, 16)]
    assert len(kernels) >= 2 and not np.array_equal(kernels[0], kernels[1])


def test_a_pass_is_the_same_batches_from_any_start():
    source = sources.synthetic(num_train=40)  # 5 batches a pass
    whole = list(kerakd.data.training_dataset(source, 8, repeat=True, seed=3).take(12))
    tf.random.set_seed(123)  # the caller's global seed plays no part
    later = kerakd.data.training_dataset(source, 8, repeat=True, seed=3, start_batch=7)
    for (x, y), (x_later, y_later) in zip(whole[7:], later.take(5), strict=True):
        np.testing.assert_array_equal(x, x_later)
        np.testing.assert_array_equal(y, y_later)
    # Passes differ from each other.
    assert not np.array_equal(whole[0][1], whole[5][1])


def test_nan_loss_stops_naming_term_and_step_and_keeps_the_checkpoint(
        faulty_methods, tmp_path):
    # Epoch 2's last batch (of 3): skipped, it is one third of the epoch.
    args = ["--method=nan_at", "--nan_at_bad_steps=5", *TINY, "--steps_per_epoch=3",
            f"--model_dir={tmp_path}"]
    message = r"'poison' is nan at training step 6 \(epoch 2, batch 3\).*checkpoint of epoch 1"
    with pytest.raises(NonFiniteLossError, match=message):
        train.run_with_args(args)
    assert committed_epoch(tmp_path) == 1
    assert not (tmp_path / "student.keras").exists()
    assert not (tmp_path / "results.json").exists()

    # The way on: resume the stopped run, skipping such batches.
    results = train.run_with_args([*args, "--nan_policy=skip_batch"])
    assert results["resumed_from_epoch"] == 1
    assert results["history"][1]["skipped_batches"] == 1
    assert all(np.isfinite(v) for v in results["history"][1].values())


def test_nan_stop_before_any_checkpoint_says_none_exists(faulty_methods, tmp_path):
    with pytest.raises(NonFiniteLossError, match=re.escape(
            f"{tmp_path} holds no checkpoint (no epoch finished): the same command "
            "starts over.")) as stopped:
        train.run_with_args(["--method=nan_at", "--nan_at_bad_steps=0", *TINY,
                             f"--model_dir={tmp_path}"])
    assert "epoch 0" not in str(stopped.value)


@pytest.mark.parametrize("bad_steps, share, message", [
    # Epoch 2's batches are steps 4-7: 3 of its 4 skipped > 0.5 (the default).
    ("4,5,6", None, r"skipped 3 of the 3 batches so far of epoch 2 \(4 batches\), more "
                    r"than --max_skipped_share=0\.5 of its batches"),
    ("4,5,6,7", "1", r"skipped 4 of the 4 batches so far of epoch 2 \(4 batches\), every "
                     r"batch"),
])
def test_skipping_most_batches_stops_the_run(faulty_methods, tmp_path, capsys, bad_steps,
                                             share, message):
    args = ["--method=nan_at", f"--nan_at_bad_steps={bad_steps}", "--nan_policy=skip_batch",
            *TINY, "--steps_per_epoch=4", "--batch_size=8",
            *([f"--max_skipped_share={share}"] if share else []), f"--model_dir={tmp_path}"]
    with pytest.raises(NonFiniteLossError, match=message + r".*keeps the checkpoint of "
                                                           r"epoch 1"):
        train.run_with_args(args)
    assert committed_epoch(tmp_path) == 1
    assert not (tmp_path / "student.keras").exists()
    assert not (tmp_path / "results.json").exists()
    assert "Epoch 2/2" in capsys.readouterr().out
    history = train.read_checkpoint(str(tmp_path))["progress"]["history"]
    assert len(history) == 1 and history[0]["skipped_batches"] == 0
    if share:  # a resumed run may change the share (its way on)
        assert train.flag_changes(str(tmp_path), kerakd_flags.parse(
            ["kerakd-train", *args[:-2], "--max_skipped_share=0.9", args[-1]])) == []


def test_main_exits_non_zero_with_the_message(monkeypatch, tmp_path):
    from kerakd import training

    def stop(flag_values):
        raise NonFiniteLossError("Loss term 'kd' is nan at training step 7.")

    monkeypatch.setattr(training, "train", stop)
    # `main` reads the process's flags, as `app.run` leaves them parsed.
    monkeypatch.setattr(flags, "FLAGS", kerakd_flags.parse(
        ["kerakd-train", "--method=none", "--dataset=synthetic", f"--model_dir={tmp_path}"]))
    with pytest.raises(SystemExit) as exit_info:
        train.main(["kerakd-train"])
    assert exit_info.value.code == "kerakd-train: Loss term 'kd' is nan at training step 7."


def _nan_in_batch(n_batches, bad, batch_size=8):
    images, labels = make_images(n_batches * batch_size), make_labels(n_batches * batch_size)
    if bad is not None:
        images[bad * batch_size] = np.nan
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


def small_model():
    """Conv + BatchNorm + classifier: what a skipped batch must not touch, fast."""
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.Conv2D(4, 3, strides=4)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x))


def test_a_skipped_batch_leaves_no_trace():
    """A NaN batch skipped = a run that never saw it: weights, BatchNorm
    statistics and optimizer state all equal."""
    student = small_model()
    initial = student.get_weights()

    def fit(dataset):
        student.set_weights(initial)
        distiller = kerakd.Distiller(student, "none", nan_policy="skip_batch")
        distiller.compile(keras.optimizers.SGD(0.1, momentum=0.9))
        history = distiller.fit(dataset, epochs=1, verbose=0)
        state = [v.numpy() for v in (*student.weights, *distiller.optimizer.variables)]
        return state, history.history

    images, labels = make_images(24), make_labels(24)
    skipped_state, skipped = fit(_nan_in_batch(3, bad=1))
    kept = np.r_[0:8, 16:24]
    never_state, never = fit(
        tf.data.Dataset.from_tensor_slices((images[kept], labels[kept])).batch(8))
    assert skipped["skipped_batches"] == [1.0] and never["skipped_batches"] == [0.0]
    assert skipped["loss"] == pytest.approx(never["loss"])
    for a, b in zip(skipped_state, never_state, strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_epoch_of_skipped_batches_reports_nan_not_zero():
    images, labels = make_images(16), make_labels(16)
    images[:] = np.nan
    distiller = kerakd.Distiller(small_model(), "none", nan_policy="skip_batch")
    distiller.compile(keras.optimizers.SGD(0.1))
    history = distiller.fit(images, labels, batch_size=8, epochs=1, verbose=0).history
    assert history["skipped_batches"] == [2.0]
    for name in ("loss", "ce", "accuracy"):
        assert np.isnan(history[name][0]), (name, history[name])


def test_without_skipping_a_nan_batch_poisons_the_student():
    """The check above can fail: the same batch, not skipped, ruins the weights."""
    student = small_model()
    distiller = kerakd.Distiller(student, "none")
    distiller.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    with pytest.raises(NonFiniteLossError, match=r"'ce' is nan at training step 2 "
                                                 r"\(epoch 1, batch 2\)"):
        distiller.fit(_nan_in_batch(3, bad=1), epochs=1, verbose=0)
    assert not all(np.isfinite(w).all() for w in student.get_weights())


# -- bad input --------------------------------------------------------------


@pytest.mark.parametrize("bad", [NUM_CLASSES, -1])
def test_labels_outside_the_classes_stop_training(bad):
    labels = make_labels(16)
    labels[11] = bad
    distiller = kerakd.Distiller(small_model(), "none")
    distiller.compile(keras.optimizers.SGD(0.1))
    dataset = tf.data.Dataset.from_tensor_slices((make_images(16), labels)).batch(8)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            f"Labels must be class ids in [0, {NUM_CLASSES}) (the student predicts "
            f"{NUM_CLASSES} classes), but this batch has labels from")):
        distiller.fit(dataset, epochs=1, verbose=0)


def _ends_in(*last_layers):
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.Dense(NUM_CLASSES)(keras.layers.GlobalAveragePooling2D()(inputs))
    for layer in last_layers:
        x = layer(x)
    return keras.Model(inputs, x, name="probabilities")


@pytest.mark.parametrize("model", [
    lambda: _ends_in(keras.layers.Softmax()),
    lambda: _ends_in(keras.layers.Activation("softmax")),
    lambda: _ends_in(keras.ops.softmax),
    lambda: _ends_in(keras.Sequential([keras.layers.Dense(NUM_CLASSES), keras.layers.Softmax()])),
    lambda: keras.Sequential([keras.Input(IMAGE_SHAPE), keras.layers.Flatten(),
                              keras.layers.Dense(NUM_CLASSES), keras.layers.Softmax()],
                             name="probabilities"),
], ids=["Softmax", "Activation", "ops.softmax", "nested", "Sequential"])
def test_a_model_ending_in_any_softmax_is_refused(model):
    with pytest.raises(ValueError, match="'probabilities' ends in a softmax.*needs logits"):
        kerakd.Distiller(model(), "none")
    kerakd.Distiller(_ends_in(keras.layers.Activation("linear")), "none")  # logits pass


def test_integer_images_warn_once():
    distiller = kerakd.Distiller(small_model(), "none")
    distiller.compile(keras.optimizers.SGD(0.1))
    images = np.random.default_rng(0).integers(0, 256, (16, *IMAGE_SHAPE)).astype("uint8")
    with pytest.warns(UserWarning, match="trains on uint8 images: raw pixels") as warned:
        distiller.fit(images, make_labels(16), batch_size=8, epochs=2, verbose=0)
    assert sum("raw pixels" in str(w.message) for w in warned) == 1


def test_unknown_student_tap_lists_the_layers(tmp_path):
    model_dir = tmp_path / "run"
    with pytest.raises(app.UsageError, match=r"--student_taps=stage9: .*no layer named "
                                             r"'stage9' \(did you mean \[.*'stage1'.*"
                                             r"it has: \['images'"):
        train.run_with_args(["--method=at", "--student_taps=stage9", *TINY,
                             f"--teacher={_teacher(tmp_path)}", f"--model_dir={model_dir}"])
    assert not model_dir.exists()


def _teacher(directory, classes=4, shape=(16, 16, 3)):
    path = str(directory / f"teacher{classes}.keras")
    kerakd.models.get("resnet8", classes, shape).save(path)
    return path


@pytest.mark.parametrize("classes, shape, wrong", [(3, (16, 16, 3), "3 classes"),
                                                   (4, (32, 32, 3), "(32, 32, 3)")])
def test_teacher_and_student_must_agree(tmp_path, classes, shape, wrong):
    teacher = kerakd.models.get("resnet8", classes, shape)
    student = kerakd.models.get("resnet8", 4, (16, 16, 3))
    with pytest.raises(ValueError, match=re.escape(wrong.split(" ")[0])):
        kerakd.Distiller(student, "kd", teacher)
    with pytest.raises(app.UsageError, match=r"--teacher=.*" + re.escape(wrong)):
        train.run_with_args(["--method=kd", f"--teacher={_teacher(tmp_path, classes, shape)}",
                             *TINY, f"--model_dir={tmp_path / 'run'}"])


def arrays(n=8, shape=IMAGE_SHAPE, labels=None):
    images = np.zeros((n, *shape), np.uint8)
    return images, np.zeros(n, np.int64) if labels is None else np.asarray(labels)


@pytest.mark.parametrize("train_split, message", [
    (arrays(labels=[0, 1, 2, 7, 0, 0, 0, 0]),
     r"training split: label 7 is outside the 5 classes \(0 to 4\)"),
    (arrays(labels=[0, -1, 0, 0, 0, 0, 0, 0]), "label -1 is outside the 5 classes"),
    (arrays(shape=(16, 16)), r"images of shape \(8, 16, 16\).*\(N, H, W, C\).*\[\.\.\., None\]"),
    ((arrays()[0].astype("float32"), arrays()[1]), "images are float32; pass uint8"),
    (arrays(n=0), "training split: no examples"),
])
def test_bad_arrays_are_refused_naming_the_problem(train_split, message):
    with pytest.raises(ValueError, match=message):
        sources.ArraySource("mine", train_split, arrays(), NUM_CLASSES)


def test_an_empty_folder_dataset_is_refused(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "data" / name).mkdir(parents=True)
    with pytest.raises(ValueError, match="found 0 training and 0 validation images"):
        train.run_with_args(["--method=none", *TINY, f"--dataset=folder:{tmp_path / 'data'}",
                             f"--model_dir={tmp_path / 'run'}"])


def test_a_dataset_smaller_than_a_batch_is_refused(tmp_path):
    with pytest.raises(app.UsageError, match=r"256 training examples, fewer than one "
                                             r"batch \(--batch_size=512\)"):
        train.run_with_args(["--method=none", *TINY, "--batch_size=512",
                             f"--model_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_a_flagfile_typo_names_the_flag_and_the_file(tmp_path):
    inner = tmp_path / "inner.flags"
    inner.write_text("--method=kd\n--kd_temprature=2\n")
    outer = tmp_path / "outer.flags"
    outer.write_text(f"--epochs=3\n--flagfile={inner}\n")
    with pytest.raises(flags.Error, match=re.escape(str(inner)) + r".*kd_temprature"):
        kerakd_flags.parse(["kerakd-train", f"--flagfile={outer}", "--model_dir=x"])


@pytest.mark.parametrize("flag", ["--kd_temperature=0", "--kd_kd_weight=-1"])
def test_a_method_hyperparameter_out_of_range_names_the_flag(tmp_path, flag):
    with pytest.raises(app.UsageError, match="^" + re.escape(flag.split("=")[0])):
        train.run_with_args(["--method=kd", flag, f"--teacher={_teacher(tmp_path)}", *TINY,
                             f"--model_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("corrupt", ["garbage", "truncated"])
def test_a_corrupt_teacher_file_is_named(tmp_path, corrupt):
    path = tmp_path / "teacher.keras"
    if corrupt == "garbage":
        path.write_bytes(b"not a model" * 100)
    else:
        content = open(_teacher(tmp_path), "rb").read()
        path.write_bytes(content[:len(content) // 2])
    with pytest.raises(app.UsageError, match=re.escape(f"--teacher={path} is not a "
                                                       "readable Keras model")):
        train.run_with_args(["--method=kd", f"--teacher={path}", *TINY,
                             f"--model_dir={tmp_path / 'run'}"])


def stopped_run(model_dir, args):
    """The files a run of `args` killed after epoch 1 leaves (weights aside)."""
    flag_values = kerakd_flags.parse(["kerakd-train", *args, f"--model_dir={model_dir}"])
    (model_dir / "checkpoints").mkdir(parents=True)
    (model_dir / "run.flags").write_text("\n".join(kerakd_flags.flagfile_lines(flag_values)))
    (model_dir / "checkpoints" / "checkpoint.json").write_text(json.dumps(
        {"epoch": 1, "weights": "epoch-1.weights.h5", "progress": {"epochs_done": 1}}))


def test_a_run_of_other_flags_is_kept_unless_overwrite(tmp_path):
    model_dir = tmp_path / "run"
    stopped_run(model_dir, ["--method=none", *TINY, "--seed=5"])
    with pytest.raises(app.UsageError, match=r"stopped after epoch 1.*--seed: 5 -> 0.*"
                                             r"--overwrite"):
        train.run_with_args(["--method=none", *TINY, f"--model_dir={model_dir}"])
    assert committed_epoch(model_dir) == 1

    results = train.run_with_args(["--method=none", *TINY, "--epochs=1", "--overwrite",
                                   f"--model_dir={model_dir}"])
    assert results["resumed_from_epoch"] == 0
    moved, = tmp_path.glob("run.replaced-*")
    assert committed_epoch(moved) == 1 and "--seed=5" in (moved / "run.flags").read_text()
    assert "overwrite" not in (model_dir / "run.flags").read_text()
    # A finished run, too, is moved aside only with --overwrite.
    with pytest.raises(app.UsageError, match="holds a finished run.*--overwrite"):
        train.run_with_args(["--method=none", *TINY, "--epochs=1",
                             f"--model_dir={model_dir}"])


def test_a_teacher_changed_during_the_run_fails_loudly(faulty_methods, tmp_path):
    model_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"the teacher's weights changed during the run"):
        train.run_with_args(["--method=teacher_tamper", f"--teacher={_teacher(tmp_path)}",
                             *TINY, "--epochs=1", f"--model_dir={model_dir}"])
    assert not (model_dir / "student.keras").exists()
    assert committed_epoch(model_dir) == 1


def test_float_images_in_0_255_warn_once_and_normalised_ones_do_not():
    import warnings as warnings_module

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (16, *IMAGE_SHAPE)).astype("float32")
    distiller = kerakd.Distiller(small_model(), "none")
    distiller.compile(keras.optimizers.SGD(0.01))
    with pytest.warns(UserWarning, match="float images that reach 255.0: raw 0-255") as warned:
        distiller.fit(pixels, make_labels(16), batch_size=8, epochs=2, verbose=0)
    assert sum("raw 0-255" in str(w.message) for w in warned) == 1
    normalised = kerakd.Distiller(small_model(), "none")
    normalised.compile(keras.optimizers.SGD(0.01))
    with warnings_module.catch_warnings(record=True) as caught:
        warnings_module.simplefilter("always")
        normalised.fit((pixels / 255 - 0.5) / 0.25, make_labels(16), batch_size=8, epochs=1,
                       verbose=0)
    assert not any("raw" in str(w.message) for w in caught)
