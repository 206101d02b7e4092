"""End-to-end runs of `kerakd-train` (`kerakd.train`) on tiny data, and its errors."""

import glob
import json
import os
import re
import subprocess
import sys
import textwrap

import keras
import pytest
import tensorflow as tf
from absl import app
from absl import flags

import kerakd
from kerakd import flags as kerakd_flags
from kerakd import train
from kerakd.methods.base import Method, MethodOutput

TINY = ["--dataset=synthetic", "--student=resnet8", "--batch_size=16",
        "--steps_per_epoch=2", "--lr_milestones=1", "--epochs=2"]


def scalars(log_dir):
    """`{tag: {step: value}}` of the TensorBoard event files in `log_dir`."""
    found = {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = float(
                    tf.make_ndarray(value.tensor))
    return found


def run_python(code, timeout=300):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("teacher")
    train.run_with_args(["--method=none", *TINY, "--epochs=1", "--lr_milestones=",
                         f"--model_dir={model_dir}"])
    return str(model_dir / "student.keras")


def test_kd_run_writes_models_logs_and_results(teacher_file, tmp_path):
    results = train.run_with_args(
        ["--method=kd", f"--teacher={teacher_file}", "--kd_temperature=2", *TINY,
         f"--model_dir={tmp_path}"])

    for name in ("student.keras", "best.keras", "results.json", "run.flags"):
        assert (tmp_path / name).exists(), name
    assert results == json.loads((tmp_path / "results.json").read_text())
    assert results["epochs"] == 2 and results["resumed_from_epoch"] == 0
    assert 0 <= results["best_accuracy"] <= 1 and results["best_epoch"] in (1, 2)
    assert results["final_accuracy"] == results["final_metrics"]["val_accuracy"]
    assert results["wall_time_s"] > 0
    assert results["flags"]["kd_temperature"] == 2.0
    assert "fitnet_hint_weight" not in results["flags"]  # only the chosen method's

    train_scalars = scalars(tmp_path / "logs" / "train")
    for tag in ("epoch_loss", "epoch_ce", "epoch_kd", "epoch_accuracy",
                "epoch_learning_rate"):
        assert sorted(train_scalars[tag]) == [0, 1], tag
    assert train_scalars["epoch_learning_rate"][1] == pytest.approx(0.005)
    validation = scalars(tmp_path / "logs" / "validation")
    for tag in ("epoch_loss", "epoch_ce", "epoch_accuracy"):
        assert sorted(validation[tag]) == [0, 1], tag
    assert validation["epoch_ce"][1] > 0

    # Both exported students load in a process that never imports kerakd.
    check = run_python(f"""
        import sys, keras
        for name in ("student.keras", "best.keras"):
            model = keras.models.load_model({str(tmp_path)!r} + "/" + name)
            assert model.output_shape == (None, 4), model.output_shape
        assert not any(m.startswith("kerakd") for m in sys.modules)
        print("loaded")
    """)
    assert "loaded" in check.stdout, check.stderr[-3000:]


def test_killed_run_resumes_after_its_last_epoch(tmp_path):
    args = ["--method=none", *TINY, f"--model_dir={tmp_path}"]
    # Dies like a SIGKILL (no clean-up) right after epoch 1's checkpoint.
    killed = run_python(f"""
        import os
        from kerakd import train
        save = train.RunProgress.on_epoch_end
        def save_then_die(self, epoch, logs=None):
            save(self, epoch, logs)
            os._exit(3)
        train.RunProgress.on_epoch_end = save_then_die
        train.run_with_args({args!r})
    """)
    assert killed.returncode == 3, killed.stderr[-3000:]
    assert not (tmp_path / "results.json").exists()

    with pytest.raises(app.UsageError, match="--epochs: 2 -> 3"):
        train.run_with_args([*args, "--epochs=3"])

    results = train.run_with_args(args)
    assert results["resumed_from_epoch"] == 1
    assert results["epochs"] == 2
    assert sorted(scalars(tmp_path / "logs" / "train")["epoch_loss"]) == [0, 1]

    with pytest.raises(app.UsageError, match="holds a finished run"):
        train.run_with_args(args)


def test_tfds_cifar100_with_mixup(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        results = train.run_with_args([
            "--method=none", "--dataset=cifar100", "--student=resnet8", "--epochs=1",
            "--batch_size=8", "--steps_per_epoch=2", "--lr_milestones=",
            "--augment=mixup", f"--data_dir={tmp_path / 'tfds'}",
            f"--model_dir={tmp_path / 'run'}"])
    assert results["flags"]["dataset"] == "cifar100"
    student = keras.models.load_model(tmp_path / "run" / "student.keras")
    assert student.input_shape == (None, 32, 32, 3)
    assert student.output_shape == (None, 100)


@pytest.mark.parametrize("args, message", [
    (["--method=kd", "--fitnet_hint_weight=3"],
     "--fitnet_hint_weight is a flag of method 'fitnet'"),
    (["--method=kd"], "pass --teacher"),
    (["--teacher=x.keras"], "--teacher is set, but --method=none"),
    (["--method=kd", "--teacher=missing.keras"], "--teacher=missing.keras: no such file"),
    (["--method=no_such_method"], "--method=no_such_method"),
    (["--student=resnet9"], "--student=resnet9"),
    (["--lr_milestones=2,1", "--epochs=3"], "--lr_milestones"),
    (["--num_logical_cpus=2"], "--num_logical_cpus"),
    (["--sync_batchnorm"], "--sync_batchnorm synchronizes BatchNorm across replicas"),
    (["--tpu=grpc://10.0.0.2:8470"], "add --strategy=tpu"),
    (["--strategy=tpu"], "--strategy=tpu --tpu=local: no TPU could be reached"),
    (["--mix_alpha=0.4"], "--mix_alpha applies to --augment=mixup"),
    (["--optimizer=adam", "--momentum=0.5"], "--momentum applies to --optimizer=sgd"),
    (["--warmup_epochs=2", "--epochs=2", "--lr_milestones="], "--warmup_epochs"),
])
def test_bad_flags_fail_before_any_work(tmp_path, args, message):
    model_dir = tmp_path / "run"
    with pytest.raises(app.UsageError, match=re.escape(message)):
        train.run_with_args(["--dataset=synthetic", *args, f"--model_dir={model_dir}"])
    assert not model_dir.exists()


@pytest.mark.parametrize("args, message", [
    (["--no_such_flag=1"], "no_such_flag"),
    (["--epochs=0"], "epochs"),
    (["--augment=autoaugment"], "augment"),
    ([], "model_dir"),
])
def test_unparsable_flags_name_the_flag(args, message):
    with pytest.raises(flags.Error, match=message):
        kerakd_flags.parse(["kerakd-train", *args])


@pytest.mark.parametrize("classes, shape, wrong", [(3, (16, 16, 3), "3 classes"),
                                                   (4, (32, 32, 3), "(32, 32, 3)")])
def test_teacher_for_another_dataset_is_refused(tmp_path, classes, shape, wrong):
    path = str(tmp_path / "teacher.keras")
    kerakd.models.get("resnet8", classes, shape).save(path)
    model_dir = tmp_path / "run"
    with pytest.raises(app.UsageError, match=r"--teacher=.*" + re.escape(wrong)):
        train.run_with_args(["--method=kd", f"--teacher={path}", *TINY,
                             f"--model_dir={model_dir}"])
    assert not model_dir.exists()


class _Indexed(Method):
    """A method that reads example indices (like a memory bank).

    Args:
        weight: unused.
    """

    requires_teacher = False
    needs_index = True

    def __init__(self, weight=1.0, **kwargs):
        super().__init__(**kwargs)
        self.term_weights = {"ce": weight}

    def call(self, data, training=False):
        return MethodOutput(losses={"ce": kerakd.losses.cross_entropy(
            data.labels, data.student_logits)})


def test_mixing_examples_is_refused_for_indexed_methods(tmp_path, monkeypatch):
    monkeypatch.setitem(kerakd.methods.registry._factories, "indexed", _Indexed)
    with pytest.raises(app.UsageError, match="--augment=cutmix"):
        train.run_with_args(["--method=indexed", "--indexed_weight=2", *TINY,
                             "--augment=cutmix", f"--model_dir={tmp_path}"])


def test_method_flags_come_from_constructors():
    flag_values = kerakd_flags.parse(["kerakd-train", "--model_dir=x"])
    for name in kerakd.methods.available():
        for argument in kerakd_flags.method_arguments(name):
            assert f"{name}_{argument}" in flag_values
    assert isinstance(flag_values.kd_temperature, float)
    assert isinstance(flag_values.fitnet_hint_stage, int)
    assert flag_values["kd_temperature"].help.startswith("[kd] T")


def test_learning_rate_schedule():
    schedule = train.learning_rate_schedule(0.1, [3, 5], decay=0.1, warmup_epochs=2)
    rates = [schedule(epoch) for epoch in range(6)]
    assert rates == pytest.approx([0.05, 0.1, 0.1, 0.01, 0.01, 0.001])


def test_quickstart_reuses_a_finished_run_only_with_the_same_flags(tmp_path, capsys):
    from kerakd import quickstart

    args = ["--method=none", *TINY, "--epochs=1", "--lr_milestones="]
    first = quickstart.train_once(str(tmp_path), args)
    assert quickstart.train_once(str(tmp_path), args) == first
    assert "reusing the finished run" in capsys.readouterr().out
    with pytest.raises(app.UsageError, match=re.escape("--epochs: 1 -> 2")):
        quickstart.train_once(str(tmp_path), [*args, "--epochs=2"])
