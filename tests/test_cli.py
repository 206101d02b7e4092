"""End-to-end runs of `kerakd-train` (`kerakd.train`) on tiny data, and its errors."""

import fcntl
import glob
import io
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import app
from absl import flags

import kerakd
from kerakd import flags as kerakd_flags
from kerakd import optimization
from kerakd import run_directory
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
    # What the saved student reads, so that nobody feeds it raw pixels.
    student_input = results["student_input"]
    assert student_input["shape"] == [16, 16, 3] and len(student_input["std"]) == 3
    assert student_input["normalisation"].startswith("(x / 255 - mean) / std")

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
        from kerakd import checkpoint, train
        save = checkpoint.RunProgress.on_epoch_end
        def save_then_die(self, epoch, logs=None):
            save(self, epoch, logs)
            os._exit(3)
        checkpoint.RunProgress.on_epoch_end = save_then_die
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
    (["--dataset=fashionmnist"],
     "--dataset=fashionmnist: unknown dataset 'fashionmnist'. Did you mean "
     "--dataset=fashion_mnist?"),
    (["--dataset=mnist"], "For a TensorFlow Datasets name, write --dataset=tfds:mnist."),
    (["--max_skipped_share=0.2"], "--max_skipped_share applies to --nan_policy=skip_batch"),
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
    assert flag_values["kd_temperature"].flag_type() == "float"  # a default of None resolved by kd
    assert flag_values["dkd_nckd_weight"].flag_type() == "float"
    assert isinstance(flag_values.fitnet_stage, int)
    assert flag_values["kd_temperature"].help.startswith("[kd] T")


def test_learning_rate_schedule():
    schedule = optimization.learning_rate_schedule(0.1, [3, 5], decay=0.1, warmup_epochs=2)
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


def saved_teacher(directory, classes=4, shape=(16, 16, 3)):
    """An untrained resnet8 saved as .keras: enough for checks before training."""
    path = str(directory / "teacher.keras")
    kerakd.models.get("resnet8", classes, shape).save(path)
    return path


@pytest.mark.parametrize("under", [False, True])
def test_a_model_dir_that_is_a_file_is_refused_before_any_work(tmp_path, under):
    (tmp_path / "file").write_text("x")
    model_dir = tmp_path / "file" / "run" if under else tmp_path / "file"
    what = f"lies under the file {tmp_path / 'file'}" if under else "is a file"
    with pytest.raises(app.UsageError, match=re.escape(f"--model_dir={model_dir} {what}")):
        train.run_with_args(["--method=none", *TINY, f"--model_dir={model_dir}"])


def test_fashion_mnist_data_dir_without_idx_files_fails_at_once(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(app.UsageError, match=re.escape(f"--data_dir={empty} lacks the IDX "
                                                       "files: looked for train-images-idx3")
                       + r".*t10k-labels-idx1-ubyte\.gz"):
        train.run_with_args(["--method=none", *TINY, "--dataset=fashion_mnist",
                             f"--data_dir={empty}", f"--model_dir={tmp_path / 'run'}"])
    assert os.listdir(empty) == []  # no tfds downloads/
    assert not (tmp_path / "run").exists()


def test_a_corrupt_idx_file_names_the_file_and_data_dir(tmp_path):
    for split in ("train", "t10k"):
        for kind, shape in (("images-idx3", (4, 28, 28)), ("labels-idx1", (4,))):
            path = tmp_path / f"{split}-{kind}-ubyte.gz"
            with gzip.open(path, "wb") as file:
                file.write(bytes([0, 0, 8, len(shape)]) + b"".join(
                    n.to_bytes(4, "big") for n in shape) + bytes(int(np.prod(shape))))
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(b"this is not gzip" * 10)
    with pytest.raises(app.UsageError, match=re.escape(str(bad)) + r" is not a readable gzip "
                       r"file.*Replace it in --data_dir=" + re.escape(str(tmp_path))):
        train.run_with_args(["--method=none", *TINY, "--dataset=fashion_mnist",
                             f"--data_dir={tmp_path}", f"--model_dir={tmp_path / 'run'}"])


@pytest.mark.parametrize("args, message", [
    (["--method=fitnet", "--fitnet_stage=7"],
     "--fitnet_stage=7: `stage=7` is out of range"),
    (["--method=semckd", "--batch_size=2"],
     "--batch_size=2 over 1 replica (2 per replica): SemCKD needs a per-replica batch "
     "of at least 4"),
])
def test_a_method_that_cannot_be_built_names_the_flag(tmp_path, args, message):
    model_dir = tmp_path / "run"
    with pytest.raises(app.UsageError, match="^" + re.escape(message)):
        train.run_with_args([*TINY, *args, f"--teacher={saved_teacher(tmp_path)}",
                             f"--model_dir={model_dir}"])
    assert not model_dir.exists()


def kerakd_train(args, before="", timeout=300):
    """The `kerakd-train` entry point (`train.run`) in a subprocess, after `before`."""
    return run_python("\n".join([
        "import sys", "from kerakd import train", textwrap.dedent(before),
        f"sys.argv = ['kerakd-train', *{list(args)!r}]", "train.run()"]), timeout=timeout)


def test_an_unknown_flag_in_a_flagfile_names_the_file_on_the_command_line(tmp_path):
    flagfile = tmp_path / "recipe.flags"
    flagfile.write_text("--method=none\n--learnig_rate=0.1\n")
    done = kerakd_train([f"--flagfile={flagfile}", f"--model_dir={tmp_path / 'run'}"])
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert (f"{flagfile}: Unknown command line flag 'learnig_rate'. Did you mean: "
            "learning_rate ?") in done.stderr


@pytest.mark.slow
def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(tmp_path):
    model_dir = tmp_path / "run"
    # Ctrl-C right after epoch 1's checkpoint.
    done = kerakd_train(["--method=none", *TINY, f"--model_dir={model_dir}"], before="""
        import signal
        from kerakd import checkpoint
        # A terminal's Ctrl-C reaches a process whose SIGINT raises
        # KeyboardInterrupt; this one inherits the test runner's disposition
        # and mask (a shell without job control starts `pytest ... &` with
        # SIGINT ignored), so both are set as an interactive shell leaves
        # them, and what was inherited is printed.
        print("inherited SIGINT:", signal.getsignal(signal.SIGINT),
              sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])), file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        commit = checkpoint.RunProgress.on_epoch_end
        def commit_then_interrupt(self, epoch, logs=None):
            commit(self, epoch, logs)
            signal.raise_signal(signal.SIGINT)  # in this thread, at once
        checkpoint.RunProgress.on_epoch_end = commit_then_interrupt
    """)
    assert done.returncode == 130, (done.stderr[-3000:], done.stdout[-1500:],
                                    "runner:", signal.getsignal(signal.SIGINT))
    assert "Traceback" not in done.stderr
    checkpoint = model_dir / "checkpoints" / "epoch-1.weights.h5"
    assert (f"interrupted. The last checkpoint is {checkpoint} (after epoch 1). Resume "
            f"with: kerakd-train --flagfile={model_dir / 'run.flags'}") in done.stderr
    assert not (model_dir / run_directory.LOCK).exists()


def test_a_model_dir_in_use_is_refused_naming_the_other_run(tmp_path, capsys):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    other = subprocess.Popen(["sleep", "60"])
    try:
        with open(model_dir / run_directory.LOCK, "w") as held:  # as a live run holds it
            held.write(f"{other.pid} {os.uname().nodename}\n")
            held.flush()
            fcntl.flock(held, fcntl.LOCK_EX)
            for take in (run_directory.check_not_in_use, run_directory.take_lock):
                with pytest.raises(app.UsageError, match=re.escape(
                        f"--model_dir={model_dir} is in use by another kerakd-train "
                        f"run (process {other.pid}, which holds")):
                    take(str(model_dir))
            with pytest.raises(app.UsageError, match=f"process {other.pid}"):
                train.run_with_args(["--method=none", *TINY, f"--model_dir={model_dir}"])
            assert os.listdir(model_dir) == [run_directory.LOCK]
    finally:
        other.kill()
        other.wait()
    # The lock a dead run left is taken over, and removed at the end.
    results = train.run_with_args(["--method=none", *TINY, "--epochs=1", "--lr_milestones=",
                                   f"--model_dir={model_dir}"])
    assert results["epochs"] == 1
    assert f"was left by process {other.pid}, which no longer runs" in capsys.readouterr().out
    assert not (model_dir / run_directory.LOCK).exists()


def readme_setup_command():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh)\n(.*?)```", setup, re.S)[0].strip()


@pytest.mark.parametrize("uid, apt_fails", [("0", None), ("0", "update"), ("0", "install"),
                                            ("1000", None)])
def test_readme_setup_updates_apt_and_stops_if_apt_fails(tmp_path, uid, apt_fails):
    """README's first command with stand-ins for id, apt-get and python3 that log."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    (tmp_path / "activate").write_text(
        f'pip() {{ echo "pip $*" >> {log}; }}\npython() {{ echo "python $*" >> {log}; }}\n')
    fake = {
        "id": f"echo {uid}",
        "apt-get": f'echo "apt-get $*" >> {log}; [ "$1" != "{apt_fails}" ]',
        "python3": (f'echo "python3 $*" >> {log}; mkdir -p .venv/bin; '
                    f"cp {tmp_path / 'activate'} .venv/bin/activate"),
    }
    for name, body in fake.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    done = subprocess.run(["sh", "-c", readme_setup_command()], cwd=tmp_path, text=True,
                          capture_output=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)})
    ran = log.read_text().splitlines()
    apt = ["apt-get update", "apt-get install -y dataset-fashion-mnist"]
    if apt_fails:
        assert done.returncode != 0
        assert ran == apt[:1 if apt_fails == "update" else 2]  # nothing after
        assert "dataset-fashion-mnist" in done.stderr  # says what failed
    else:
        assert done.returncode == 0, done.stderr
        assert ran == [*(apt if uid == "0" else []), "python3 -m venv .venv",
                       "pip install -e .[cpu]", "python -m kerakd.quickstart"]


@pytest.mark.parametrize("argv, method_lines", [
    (["kerakd-train", "--help"], []),
    (["kerakd-train", "--helpshort", "--method=kd+at"], ["Method kd", "--kd_temperature=",
                                                         "Method at", "--at_at_weight="]),
])
def test_help_lists_the_core_flags_by_group_and_the_methods_own(argv, method_lines, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train._parse_command_line(argv)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for group in kerakd_flags.HELP_GROUPS:
        assert f"{group[0].upper()}{group[1:]}:" in text
    grouped = {n for names in kerakd_flags.HELP_GROUPS.values() for n in names}
    parsed = kerakd_flags.parse(["kerakd-train", "--model_dir=x"])
    aliases = set(kerakd_flags.renamed_flags())  # deprecated: parsed, never listed
    core = ({f.name for f in parsed.get_flags_for_module(kerakd_flags.__name__)}
            - set(kerakd_flags._method_flag_owner(parsed)) - aliases)
    assert core == grouped, "every core flag is in one group"
    assert aliases and not any(f"--{alias}=" in text for alias in aliases)
    assert "  --learning_rate=0.05\n      Initial learning rate." in text
    for line in method_lines:
        assert line in text
    assert ("--kd_temperature" in text) == bool(method_lines)


def test_help_reads_the_method_from_a_flagfile():
    path = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "fmnist", "dist.flags")
    assert kerakd_flags.help_method(["kerakd-train", f"--flagfile={path}", "--help"]) == "dist"


def test_outside_a_terminal_a_line_every_few_steps(tmp_path, capsys):
    from kerakd import progress

    assert progress.console_verbosity(io.StringIO()) == 2  # a log file: no progress bar
    train.run_with_args(["--method=none", "--dataset=synthetic", "--student=resnet8",
                         "--batch_size=8", "--steps_per_epoch=4", "--epochs=1",
                         "--lr_milestones=", "--log_every_steps=2", f"--model_dir={tmp_path}"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1 ")]
    assert len(lines) == 1, lines  # step 2 (step 4 is the epoch's own line)
    assert re.match(r"epoch 1 step 2/4 - .*loss \d+\.\d{4}.* - \d+\.\d\ds/step$", lines[0])
