"""`kerakd-train`: trains a student with a distillation method from the shell.

    kerakd-train --flagfile=configs/kd.flags
    python -m kerakd.train --method=none --student=resnet20 --dataset=fashion_mnist \\
        --epochs=10 --lr_milestones=5,8 --model_dir=runs/fmnist/teacher

`--model_dir` receives `student.keras` (the final student, a plain Keras
model), `best.keras` (the student at its best validation accuracy),
`results.json`, `run.flags` (this run's flags, a valid flagfile), `logs/`
(TensorBoard) and `checkpoints/`: the same command run again after a crash
resumes from the last finished epoch (exactly, with `--deterministic`). A NaN
or Inf loss stops the run with an error (or, with `--nan_policy=skip_batch`,
skips the batch). See `kerakd.flags` for every flag.

From Python (the quickstart does this):

>>> results = kerakd.train.run_with_args(["--method=none", "--dataset=synthetic",
...                                       "--epochs=2", "--model_dir=/tmp/run"])
>>> results["best_accuracy"]
"""

import fcntl
import glob
import hashlib
import json
import os
import re
import shlex
import socket
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from kerakd import data
from kerakd import flags as kerakd_flags
from kerakd import methods
from kerakd import models
from kerakd.data import sources as data_sources
from kerakd.distiller import Distiller
from kerakd.callbacks import NonFiniteLossError
from kerakd.progress import StepLines, console_verbosity
from kerakd.distribute import synchronize_batchnorm

RESULTS = "results.json"
RUN_FLAGS = "run.flags"
CHECKPOINTS = "checkpoints"
# The commit point of a checkpoint: names the epoch, its weights file and the
# run's progress.
CHECKPOINT = os.path.join(CHECKPOINTS, "checkpoint.json")
# Held (flock) by the run writing the directory; holds its PID and host.
LOCK = "run.lock"
# Flags a resumed run may change: where it runs, and how it treats NaN
# batches (the way on after a run stopped on one), and what it prints.
RESUMABLE_CHANGES = ("model_dir", "overwrite", "nan_policy", "max_skipped_share",
                     "log_every_steps")


def learning_rate_schedule(base, milestones=(), decay=0.1, warmup_epochs=0):
    """`epoch -> learning rate` (epochs from 0): step decay with linear warm-up.

    The rate is `base * decay ** (milestones passed)`, where milestone `m`
    counts from epoch `m` on (PyTorch's `MultiStepLR`), scaled by
    `(epoch + 1) / warmup_epochs` during the first `warmup_epochs` epochs.

    Args:
        base: the initial learning rate.
        milestones: epochs at which the rate is multiplied by `decay`.
        decay: the factor applied at each milestone.
        warmup_epochs: epochs of linear warm-up (0: none).

    Example:

    >>> schedule = learning_rate_schedule(0.05, [150, 180, 210])
    >>> schedule(149), schedule(150)          # 0.05, 0.005
    """

    def schedule(epoch, current=None):  # Keras passes the current rate too
        rate = base * decay ** sum(epoch >= m for m in milestones)
        if epoch < warmup_epochs:
            rate *= (epoch + 1) / warmup_epochs
        return rate

    return schedule


def _write_json(path, content):
    """Writes JSON atomically (a crash leaves the old file or the new one)."""
    with open(path + ".tmp", "w") as file:
        json.dump(content, file, indent=2)
    os.replace(path + ".tmp", path)


def read_checkpoint(model_dir):
    """The last committed checkpoint of `model_dir` (see `RunProgress`), or None."""
    path = os.path.join(model_dir, CHECKPOINT)
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return json.load(file)


class RunProgress(keras.callbacks.Callback):
    """Commits the run's state after every epoch; restores it when resuming.

    After epoch `N` it writes the model's weights (student, method and
    optimizer state) to `checkpoints/epoch-N.weights.h5` and the states of
    its random generators (`keras.random.SeedGenerator`: CRD's negatives,
    LFMA's cutout masks, AID's rotations; Keras's weights files leave them
    out) to `checkpoints/epoch-N.random.npz`, then commits
    `checkpoints/checkpoint.json`, which names those files and holds the
    progress: the per-epoch metrics history, best and last validation
    accuracy, wall time. The commit is an `os.replace`, so a run killed at
    any moment leaves a checkpoint whose weights file is complete; older
    weights files go only after it. `best.keras` (the student at its best
    validation accuracy) is written after the commit.

    Args:
        student: the student model to save when validation accuracy improves.
        model_dir: the run's directory.
    """

    def __init__(self, student, model_dir):
        super().__init__()
        self.student = student
        self.best_path = os.path.join(model_dir, "best.keras")
        self.checkpoint_dir = os.path.join(model_dir, CHECKPOINTS)
        self.state = {"epochs_done": 0, "best_accuracy": None, "best_epoch": None,
                      "final_accuracy": None, "final_metrics": {}, "history": [],
                      "wall_time_s": 0.0}
        self._committed = read_checkpoint(model_dir)
        if self._committed:
            self.state.update(self._committed["progress"])

    def on_train_begin(self, logs=None):
        self._start = time.time()
        self._before = self.state["wall_time_s"]
        if self._committed:
            if not self.model.optimizer.built:  # its state is in the weights file
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(
                os.path.join(self.checkpoint_dir, self._committed["weights"]))
            self._restore_random_state(self._committed.get("random_state"))
            # A kill between the commit and best.keras left best.keras behind.
            if self.state["best_epoch"] == self.state["epochs_done"]:
                self._save_best()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        accuracy = logs.get("val_accuracy")
        best = self.state["best_accuracy"]
        improved = accuracy is not None and (best is None or accuracy > best)
        if improved:
            self.state.update(best_accuracy=accuracy, best_epoch=epoch + 1)
        self.state.update(
            epochs_done=epoch + 1,
            final_accuracy=accuracy,
            final_metrics=logs,
            history=[*self.state["history"], logs],
            wall_time_s=self._before + time.time() - self._start,
        )
        self._commit(epoch + 1)
        if improved:
            self._save_best()

    def _random_generators(self):
        """The state variables of the model's random generators: its
        variables that are not weights."""
        weights = {id(v) for v in self.model.weights}
        return [v for v in self.model.variables if id(v) not in weights]

    def _restore_random_state(self, name):
        generators = self._random_generators()
        if name is None:
            if generators:  # a checkpoint of an older kerakd: resumes, not exactly
                print("kerakd-train: the checkpoint holds no random-generator state; "
                      "the resumed run draws other random numbers than an "
                      "uninterrupted one.")
            return
        with np.load(os.path.join(self.checkpoint_dir, name)) as saved:
            states = [saved[f"state{i}"] for i in range(len(saved.files))]
        if [s.shape for s in states] != [tuple(v.shape) for v in generators]:
            raise ValueError(
                f"{self.checkpoint_dir}/{name} holds {len(states)} random-generator "
                f"states, the model has {len(generators)}: the checkpoint is of "
                "another model or method. Use another --model_dir, or --overwrite.")
        for variable, state in zip(generators, states):
            variable.assign(state)

    def _commit(self, epoch):
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        name = f"epoch-{epoch}.weights.h5"
        random_state = f"epoch-{epoch}.random.npz"
        temporary = os.path.join(self.checkpoint_dir, f"epoch-{epoch}.tmp.weights.h5")
        self.model.save_weights(temporary)
        os.replace(temporary, os.path.join(self.checkpoint_dir, name))
        temporary = os.path.join(self.checkpoint_dir, f"epoch-{epoch}.tmp.random.npz")
        with open(temporary, "wb") as file:
            np.savez(file, **{f"state{i}": np.asarray(v.numpy())
                              for i, v in enumerate(self._random_generators())})
        os.replace(temporary, os.path.join(self.checkpoint_dir, random_state))
        _write_json(os.path.join(self.checkpoint_dir, os.path.basename(CHECKPOINT)),
                    {"epoch": epoch, "weights": name, "random_state": random_state,
                     "progress": self.state})
        for path in glob.glob(os.path.join(self.checkpoint_dir, "epoch-*")):
            if os.path.basename(path) not in (name, random_state):
                os.remove(path)  # older epochs, or a save a crash cut short

    def _save_best(self):
        temporary = os.path.join(os.path.dirname(self.best_path), "best.tmp.keras")
        models.core_keras(self.student).save(temporary)
        os.replace(temporary, self.best_path)


class StopOnSkippedBatches(keras.callbacks.Callback):
    """Stops a `--nan_policy=skip_batch` run that diverged: once more than
    `max_share` of an epoch's batches, or all of them, were skipped.

    It raises `NonFiniteLossError` after the batch that crosses the line,
    before the epoch ends: that epoch is neither checkpointed nor reported
    (its means would cover few batches, or none).

    Args:
        steps: the batches of an epoch.
        max_share: `--max_skipped_share`.
    """

    def __init__(self, steps, max_share):
        super().__init__()
        self.steps, self.max_share = steps, max_share

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        skipped = round(float(keras.ops.convert_to_numpy(
            (logs or {}).get("skipped_batches", 0))))
        if skipped < self.steps and skipped <= self.max_share * self.steps:
            return
        why = ("every batch" if skipped >= self.steps else
               f"more than --max_skipped_share={self.max_share:g} of its batches")
        raise NonFiniteLossError(
            f"--nan_policy=skip_batch skipped {skipped} of the {batch + 1} batches so "
            f"far of epoch {self._epoch + 1} ({self.steps} batches), {why}: the loss "
            "is NaN or Inf on most batches, so training has diverged; the run stops "
            "(exit 1) without exporting a student. Lower --learning_rate, set "
            "--clip_grad_norm, or check the data."
        )


def _configure_devices(num_logical_cpus):
    """Splits the CPU into logical devices; only possible before TF starts."""
    if not num_logical_cpus:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu) or []
    if len(current) == num_logical_cpus:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_logical_cpus
        )
    except RuntimeError as error:
        raise app.UsageError(
            f"--num_logical_cpus={num_logical_cpus}: TensorFlow has already "
            "started in this process; run kerakd-train in a fresh process."
        ) from error


def _strategy(name, tpu):
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # All GPUs, or else every (logical) CPU.
        gpus = tf.config.list_logical_devices("GPU")
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(None if gpus else cpus)
    if name == "tpu":
        return _tpu_strategy(tpu)
    return tf.distribute.MultiWorkerMirroredStrategy()


def _tpu_strategy(tpu):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        raise app.UsageError(
            f"--strategy=tpu --tpu={tpu}: no TPU could be reached "
            f"({str(error).splitlines()[0][:200]}). Run on a TPU VM (--tpu=local) or "
            "pass the TPU's name or grpc:// address; without a TPU use "
            "--strategy=default or mirrored."
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def _output_dir(model_dir, strategy):
    """`model_dir`, or `model_dir/workers/<task>` for a non-chief worker, so
    that workers of one run never write the same file."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type is None:
        return model_dir
    has_chief = "chief" in resolver.cluster_spec().jobs
    if task_type == "chief" or (task_type == "worker" and resolver.task_id == 0
                                and not has_chief):
        return model_dir
    return os.path.join(model_dir, "workers", f"{task_type}{resolver.task_id}")


def _move_aside(model_dir):
    """Moves the run in `model_dir` to `<model_dir>.replaced-<time>` (all but
    this run's lock); returns the new name."""
    moved = f"{os.path.normpath(model_dir)}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    os.makedirs(moved)
    for name in _run_files(model_dir):
        os.rename(os.path.join(model_dir, name), os.path.join(moved, name))
    return moved


def _run_files(model_dir):
    """The entries of `model_dir` but its lock file."""
    return [n for n in os.listdir(model_dir) if n != LOCK]


def _lock_owner(fd):
    """The `PID host` text a lock file holds (`"unknown"` if empty)."""
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 200).decode(errors="replace").strip() or "unknown"


def _describe_owner(owner):
    pid, _, host = owner.partition(" ")
    return f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")


def _in_use_error(model_dir, owner):
    return app.UsageError(
        f"--model_dir={model_dir} is in use by another kerakd-train run "
        f"({_describe_owner(owner)}, which holds {os.path.join(model_dir, LOCK)}). Wait "
        "for it to end (or stop it), or use another --model_dir."
    )


def check_not_in_use(model_dir):
    """Refuses `model_dir` early if a live run holds its lock; takes nothing.

    Raises:
        absl.app.UsageError: naming the other run's PID.
    """
    try:
        fd = os.open(os.path.join(model_dir, LOCK), os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use_error(model_dir, _lock_owner(fd)) from None
    finally:
        os.close(fd)


def take_lock(model_dir):
    """Takes the exclusive lock of `model_dir` (creating it): an advisory
    `flock` on `model_dir/run.lock`, which holds this process's PID and
    host. The kernel drops the lock when the process ends, even on SIGKILL,
    so a lock left by a dead run is taken over (with a message).

    Returns:
        The lock's file descriptor, for `release_lock`.

    Raises:
        absl.app.UsageError: another live run holds the lock (naming its PID).
    """
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, LOCK)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner(fd)
            os.close(fd)
            raise _in_use_error(model_dir, owner) from None
        try:  # a run that ended just now may have removed the file we locked
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    left = os.fstat(fd).st_size and _lock_owner(fd)
    if left:
        print(f"kerakd-train: {path} was left by {_describe_owner(left)}, which no "
              "longer runs; taking it over.")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def release_lock(model_dir, fd):
    """Removes the lock `take_lock` took (nothing if `fd` is None)."""
    if fd is None:
        return
    try:
        os.remove(os.path.join(model_dir, LOCK))
    except FileNotFoundError:
        pass
    os.close(fd)


def _claim_model_dir(model_dir, flag_values):
    """Takes `model_dir` for this run: a new run, or the resumption of a killed one.

    A finished run, or a killed run of other flags, is refused; with
    `--overwrite` it is moved aside (never deleted) and the run starts over.

    Call it holding the lock of `model_dir` (`take_lock`).

    Returns:
        The epoch a killed run resumes after (0 for a new run).
    """
    fv = flag_values
    if fv.overwrite and os.path.isdir(model_dir) and _run_files(model_dir):
        print(f"kerakd-train: --overwrite: moved the run in {model_dir} to "
              f"{_move_aside(model_dir)}.")
    if os.path.exists(os.path.join(model_dir, RESULTS)):
        raise app.UsageError(
            f"--model_dir={model_dir} holds a finished run ({RESULTS}). Use a new "
            "--model_dir, or pass --overwrite to move that run aside and train again."
        )
    flagfile = os.path.join(model_dir, RUN_FLAGS)
    checkpoint = read_checkpoint(model_dir)
    resume_epoch = 0
    if checkpoint:
        resume_epoch = checkpoint["epoch"]
        changed = flag_changes(model_dir, fv)
        if changed:
            details = "; ".join(changed)
            raise app.UsageError(
                f"--model_dir={model_dir} holds a run stopped after epoch "
                f"{resume_epoch}, started with other flags ({details}). Resume it "
                f"with --flagfile={flagfile}, use a new --model_dir, or pass "
                "--overwrite to move that run aside and start over."
            )
    else:
        os.makedirs(model_dir, exist_ok=True)
        # A run killed before its first checkpoint starts over.
        best = os.path.join(model_dir, "best.keras")
        if os.path.exists(best):
            os.remove(best)
    with open(flagfile, "w") as file:
        file.write("\n".join(kerakd_flags.flagfile_lines(fv)) + "\n")
    return resume_epoch


def flag_changes(model_dir, flag_values):
    """How `flag_values` differ from the flags of the run in `model_dir`.

    Args:
        model_dir: a run's directory (it holds `run.flags`).
        flag_values: parsed flags (`kerakd.flags.parse`).

    Returns:
        `["--name: before -> now", ...]`, sorted; empty when the run used
        the same flags (those of `RESUMABLE_CHANGES` aside).

    Example:

    >>> fv = kerakd.flags.parse(["kerakd-train", *args])
    >>> if not flag_changes(fv.model_dir, fv): ...   # the same recipe
    """
    before = kerakd_flags.flag_dict(kerakd_flags.parse(
        ["kerakd-train", f"--flagfile={os.path.join(model_dir, RUN_FLAGS)}"]))
    now = kerakd_flags.flag_dict(flag_values)
    return [f"--{n}: {before.get(n)} -> {now[n]}" for n in sorted(now)
            if n not in RESUMABLE_CHANGES and before.get(n) != now[n]]


def _load_teacher(path, info, dataset):
    """Loads `--teacher` and checks it reads and predicts what the dataset has."""
    try:
        teacher = keras.models.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - any failure: not a usable model
        raise app.UsageError(
            f"--teacher={path} is not a readable Keras model (a truncated or "
            f"corrupt file, or not a .keras archive): {type(error).__name__}: "
            f"{error}. Pass the student.keras of a finished teacher run."
        ) from error
    shape = tuple(teacher.inputs[0].shape[1:])
    classes = teacher.outputs[0].shape[-1]
    shape_fits = len(shape) == len(info.image_shape) and all(
        t is None or t == d for t, d in zip(shape, info.image_shape))
    if not shape_fits or classes != info.num_classes:
        raise app.UsageError(
            f"--teacher={path} reads images of shape {shape} and predicts {classes} "
            f"classes, but --dataset={dataset} has {info.image_shape} images of "
            f"{info.num_classes} classes. Pass a teacher trained on this dataset "
            f"(kerakd-train --method=none --dataset={dataset} --model_dir=DIR makes "
            "one: DIR/student.keras)."
        )
    return teacher


def weights_digest(model):
    """SHA-256 of `model`'s weights, in order: equal digests, equal weights."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(keras.ops.convert_to_numpy(weight).tobytes())
    return digest.hexdigest()


def _make_method(flag_values, num_train):
    """The `--method` with its flags; a `num_data` argument gets the training-set
    size (memory banks have a row per example).

    Each chosen method is made on its own first, so that a rejected
    hyperparameter is reported as its flag (`--kd_temperature=0.0: ...`).
    """
    hparams = kerakd_flags.method_hparams(flag_values)
    for name, values in hparams.items():
        if "num_data" in kerakd_flags.method_arguments(name):
            values.setdefault("num_data", num_train)
        try:
            method = methods.get(name, **values)
        except (TypeError, ValueError) as error:
            named = _named_method_flags(flag_values, [name], str(error))
            raise app.UsageError(
                f"{', '.join(named) or f'--method={flag_values.method}'}: {error}"
            ) from error
    if len(hparams) == 1:
        return method
    try:
        return methods.get(flag_values.method, **hparams)
    except (TypeError, ValueError) as error:
        raise app.UsageError(f"--method={flag_values.method}: {error}") from error


def _named_method_flags(flag_values, names, message):
    """`--<method>_<argument>=value` of the arguments of methods `names` that
    `message` names as `` `argument` `` or `` `argument=value` ``; the flags
    set on the command line if any of them are named, else all named ones."""
    named = []
    for name in names:
        for argument in kerakd_flags.method_arguments(name):
            flag = f"{name}_{argument}"
            if flag in flag_values and re.search(
                    rf"`{re.escape(argument)}(=[^`]*)?`", message):
                named.append(flag_values[flag])
    named = [f for f in named if f.present] or named
    return [text for text in (f.serialize() for f in named) if text]


def _taps_text(flag_values):
    """` --student_taps=... --teacher_taps=...`, of those set."""
    return "".join(f" --{side}={','.join(flag_values[side].value)}"
                   for side in ("student_taps", "teacher_taps") if flag_values[side].value)


def _build_distiller(distiller, flag_values, image_shape, replicas):
    """Builds the Distiller (and so the method) for the per-replica batch; a
    method that cannot be built so names the flags at fault: its
    hyperparameter (`--fitnet_hint_stage=7`), `--batch_size` and the replica
    count, or the method, student and taps."""
    fv = flag_values
    per_replica = fv.batch_size // replicas
    try:
        distiller.build((per_replica, *image_shape))
    except ValueError as error:
        message = str(error)
        named = _named_method_flags(fv, kerakd_flags.method_names(fv.method), message)
        if "per-replica batch" in message:
            named.append(f"--batch_size={fv.batch_size} over {replicas} replica"
                         f"{'s' if replicas != 1 else ''} ({per_replica} per replica)")
            message += (" Raise --batch_size (it is the global batch, split over "
                        "the replicas), or train on fewer replicas.")
        where = ", ".join(named) or f"--method={fv.method} --student={fv.student}{_taps_text(fv)}"
        raise app.UsageError(f"{where}: {message}") from error


def _make_distiller(flag_values, student, method, teacher):
    """The Distiller of the flags; a tap or pairing it cannot make names the flags."""
    fv = flag_values
    try:
        return Distiller(
            student, method, teacher,
            student_taps=kerakd_flags.parse_taps(fv.student_taps),
            teacher_taps=kerakd_flags.parse_taps(fv.teacher_taps),
            weight_decay=0.0 if fv.optimizer == "adamw" else fv.weight_decay,
            nan_policy=fv.nan_policy,
            clip_grad_norm=fv.clip_grad_norm,
        )
    except ValueError as error:
        raise app.UsageError(
            f"--method={fv.method} --student={fv.student}{_taps_text(fv)}: {error}"
        ) from error


def _steps_per_epoch(flag_values, info):
    """`--steps_per_epoch`, or the full batches in one pass over the training set."""
    fv = flag_values
    if info.num_train is not None and info.num_train < fv.batch_size:
        raise app.UsageError(
            f"--dataset={fv.dataset} has {info.num_train} training examples, fewer "
            f"than one batch (--batch_size={fv.batch_size}). Use a smaller "
            "--batch_size, or check the data."
        )
    if fv.steps_per_epoch:
        return fv.steps_per_epoch
    if info.num_train is None:
        raise app.UsageError(
            f"--dataset={fv.dataset} does not tell its size: pass --steps_per_epoch."
        )
    return info.num_train // fv.batch_size


def _optimizer(flag_values):
    fv = flag_values
    if fv.optimizer == "sgd":
        return keras.optimizers.SGD(fv.learning_rate, momentum=fv.momentum,
                                    nesterov=fv.nesterov)
    if fv.optimizer == "adam":
        return keras.optimizers.Adam(fv.learning_rate)
    # PyTorch's AdamW weight decay is decoupled, as Keras's is.
    return keras.optimizers.AdamW(fv.learning_rate, weight_decay=fv.weight_decay)


def precision_policy(mixed_precision):
    """The Keras dtype policy of `--mixed_precision`: `"float32"` when off,
    else `"mixed_float16"` on a GPU and `"mixed_bfloat16"` on CPU or TPU."""
    if not mixed_precision:
        return "float32"
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def train(flag_values):
    """Runs one training as the flags say (see the module docstring).

    Args:
        flag_values: parsed `absl.flags.FlagValues` with kerakd's flags
            (`kerakd.flags.parse`).

    Returns:
        The content of `results.json`.

    Raises:
        absl.app.UsageError: a bad flag or flag combination, found before
            training starts; the message names the flag.
    """
    fv = flag_values
    kerakd_flags.check_flags(fv)
    kerakd_flags.check_files(fv)
    if fv.strategy != "multi_worker":  # other workers write elsewhere
        check_not_in_use(fv.model_dir)
    _configure_devices(fv.num_logical_cpus)
    strategy = _strategy(fv.strategy, fv.tpu)
    replicas = strategy.num_replicas_in_sync
    if fv.batch_size % replicas:
        raise app.UsageError(
            f"--batch_size={fv.batch_size} does not split evenly over {replicas} "
            f"replicas; use a multiple of {replicas}."
        )
    model_dir = _output_dir(fv.model_dir, strategy)
    try:
        source = data.get_source(fv.dataset, fv.data_dir, fv.image_size)
    except data_sources.DataError as error:
        raise app.UsageError(str(error)) from error
    info = source.info
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision_policy(fv.mixed_precision))
    lock = None
    try:
        keras.utils.set_random_seed(fv.seed)
        if fv.deterministic:
            tf.config.experimental.enable_op_determinism()
        with strategy.scope():
            teacher = _load_teacher(fv.teacher, info, fv.dataset) if fv.teacher else None
        teacher_digest = teacher and weights_digest(teacher)
        info = source.prepare().info
        steps_per_epoch = _steps_per_epoch(fv, info)
        with strategy.scope():
            method = _make_method(fv, info.num_train)
        if method.needs_index and fv.augment in ("mixup", "cutmix"):
            raise app.UsageError(
                f"--augment={fv.augment} mixes examples, but --method={fv.method} "
                "keeps a memory row per training example (needs_index). Use "
                "--augment=standard or none."
            )
        if method.needs_strong_view and fv.augment in ("mixup", "cutmix"):
            raise app.UsageError(
                f"--augment={fv.augment} mixes the images of a batch, but "
                f"--method={fv.method} also trains on a strong view of each example, "
                "which the mixing would not follow. Use --augment=standard or none."
            )
        per_replica = fv.batch_size // replicas
        with strategy.scope():
            student = models.get(fv.student, info.num_classes, info.image_shape)
            if fv.sync_batchnorm:
                student = synchronize_batchnorm(student)
            distiller = _make_distiller(fv, student, method, teacher)
            # Built before fit: a resumed run restores into built variables.
            _build_distiller(distiller, fv, info.image_shape, replicas)
            distiller.compile(optimizer=_optimizer(fv), jit_compile=fv.jit_compile)
        # Every check has passed: only now is --model_dir touched, under its lock.
        lock = take_lock(model_dir)
        resume_epoch = _claim_model_dir(model_dir, fv)
        train_ds = data.training_dataset(
            source, fv.batch_size, fv.augment, with_index=method.needs_index,
            views=("weak", "strong") if method.needs_strong_view else ("weak",),
            repeat=True, mix_alpha=fv.mix_alpha, seed=fv.seed,
            shuffle_files=not fv.deterministic,
            start_batch=resume_epoch * steps_per_epoch,
        )
        val_ds = data.validation_dataset(source, fv.batch_size)
        sample_images = next(iter(val_ds.unbatch().batch(per_replica)))[0].numpy()
        log_dir = os.path.join(model_dir, "logs")
        progress = RunProgress(student, model_dir)
        callbacks = [
            # First: a diverged epoch stops before anything logs it.
            *([StopOnSkippedBatches(steps_per_epoch, fv.max_skipped_share)]
              if fv.nan_policy == "skip_batch" else []),
            keras.callbacks.LearningRateScheduler(learning_rate_schedule(
                fv.learning_rate, kerakd_flags.lr_milestones(fv), fv.lr_decay,
                fv.warmup_epochs)),
            keras.callbacks.TensorBoard(log_dir, write_graph=False),
            *method.callbacks(log_dir, sample_images),
            # Last: the checkpoint is committed once the rest of the epoch is done.
            progress,
        ]
        verbose = console_verbosity()
        if verbose == 2 and fv.log_every_steps:
            callbacks.insert(-1, StepLines(fv.log_every_steps, steps_per_epoch))
        if resume_epoch:
            print(f"kerakd-train: resuming {model_dir} after epoch {resume_epoch}.")
        try:
            distiller.fit(train_ds, validation_data=val_ds, epochs=fv.epochs,
                          initial_epoch=resume_epoch, steps_per_epoch=steps_per_epoch,
                          callbacks=callbacks, verbose=verbose,
                          shuffle=False)  # the dataset is shuffled
        except NonFiniteLossError as error:
            raise NonFiniteLossError(f"{error} {_what_is_kept(model_dir)}") from error
        if teacher is not None and weights_digest(teacher) != teacher_digest:
            raise RuntimeError(
                f"--teacher={fv.teacher}: the teacher's weights changed during the "
                f"run (SHA-256 {teacher_digest[:12]}... at load, "
                f"{weights_digest(teacher)[:12]}... now); a method must not update "
                "its teacher. The student is not saved; fix the method."
            )
        models.core_keras(student).save(os.path.join(model_dir, "student.keras"))
        results = _write_results(model_dir, fv, progress.state, resume_epoch, info)
    finally:
        keras.config.set_dtype_policy(previous_policy)
        release_lock(model_dir, lock)
    print(f"kerakd-train: validation accuracy {results['final_accuracy']:.4f} "
          f"(best {results['best_accuracy']:.4f}, epoch {results['best_epoch']}); "
          f"outputs in {model_dir}; TensorBoard: tensorboard --logdir {log_dir}")
    return results


def _student_input(info):
    """What `student.keras` reads, for results.json: raw pixels give chance accuracy."""
    return {
        "shape": list(info.image_shape),
        "normalisation": "(x / 255 - mean) / std per channel, x the 0-255 pixels",
        "mean": [float(m) for m in info.mean],
        "std": [float(s) for s in info.std],
    }


def _write_results(model_dir, flag_values, state, resume_epoch, info):
    """Writes `results.json` of a finished run from its progress; returns it."""
    results = {
        "final_accuracy": state["final_accuracy"],
        "best_accuracy": state["best_accuracy"],
        "best_epoch": state["best_epoch"],
        "epochs": flag_values.epochs,
        "resumed_from_epoch": resume_epoch,
        "wall_time_s": round(state["wall_time_s"], 1),
        "final_metrics": state["final_metrics"],
        "history": state["history"],
        "flags": kerakd_flags.flag_dict(flag_values),
        "student_input": _student_input(info),
    }
    _write_json(os.path.join(model_dir, RESULTS), results)
    return results


def _what_is_kept(model_dir):
    """What a stopped run leaves in `model_dir` to resume from, in a sentence."""
    checkpoint = read_checkpoint(model_dir)
    if checkpoint is None:
        return (f"{model_dir} holds no checkpoint (no epoch finished): the same "
                "command starts over.")
    weights = os.path.join(model_dir, CHECKPOINTS, checkpoint["weights"])
    return (f"{model_dir} keeps the checkpoint of epoch {checkpoint['epoch']} "
            f"({weights}); run the same command to resume from it.")


def _interrupted_message(model_dir):
    """What to tell after a Ctrl-C: the last checkpoint, and the command that
    resumes from it (or starts over)."""
    checkpoint = model_dir and read_checkpoint(model_dir)
    flagfile = model_dir and os.path.join(model_dir, RUN_FLAGS)
    if checkpoint and os.path.exists(flagfile):
        return (
            f"kerakd-train: interrupted. The last checkpoint is "
            f"{os.path.join(model_dir, CHECKPOINTS, checkpoint['weights'])} (after "
            f"epoch {checkpoint['epoch']}). Resume with: kerakd-train "
            f"--flagfile={shlex.quote(flagfile)}"
        )
    command = shlex.join(["kerakd-train", *(a for a in sys.argv[1:]
                                            if a not in ("--overwrite", "--nooverwrite"))])
    return (f"kerakd-train: interrupted before the first epoch ended; "
            f"{model_dir} holds no checkpoint. Start again with: {command}")


def run_with_args(args):
    """Trains as `kerakd-train ARGS` would, in this process.

    Args:
        args: command-line arguments without the program name,
            e.g. `["--flagfile=configs/kd.flags", "--epochs=2"]`.

    Returns:
        The content of `results.json`.
    """
    return train(kerakd_flags.parse(["kerakd-train", *args]))


def main(argv):
    """Trains with `flags.FLAGS`: a NaN stop exits 1 with its message, Ctrl-C
    exits 130 saying where the last checkpoint is and how to resume."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every option is a --flag.")
    try:
        train(flags.FLAGS)
    except NonFiniteLossError as error:
        raise SystemExit(f"kerakd-train: {error}") from error  # exit status 1
    except KeyboardInterrupt:
        print(_interrupted_message(flags.FLAGS.model_dir), file=sys.stderr)
        raise SystemExit(130) from None


def _parse_command_line(argv):
    """absl's flag parsing for `app.run`, naming the flagfile that sets an
    unknown flag; a bad flag exits 1 with its message, as absl's does.
    `--help` prints the grouped flags (and the method's) and exits 0."""
    if any(a in kerakd_flags.HELP_FLAGS for a in argv[1:]):
        print(kerakd_flags.help_text(kerakd_flags.help_method(argv)))
        raise SystemExit(0)
    try:
        return kerakd_flags.parse_into(flags.FLAGS, argv)
    except flags.Error as error:
        print(f"FATAL Flags parsing error: {error}\nPass --help to list the flags "
              "(with --method=<method>, its own too).", file=sys.stderr)
        raise SystemExit(1) from None


def run():
    """Entry point of the `kerakd-train` console script."""
    kerakd_flags.define_flags(flags.FLAGS)
    app.run(main, flags_parser=_parse_command_line)


if __name__ == "__main__":
    run()
