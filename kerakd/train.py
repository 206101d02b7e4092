"""`kerakd-train`: trains a student with a distillation method from the shell.

    kerakd-train --flagfile=configs/kd.flags
    python -m kerakd.train --method=none --student=resnet20 --dataset=fashion_mnist \\
        --epochs=10 --lr_milestones=5,8 --model_dir=runs/fmnist/teacher

`--model_dir` receives `student.keras` (the final student, a plain Keras
model), `best.keras` (the student at its best validation accuracy),
`results.json`, `run.flags` (this run's flags, a valid flagfile), `logs/`
(TensorBoard) and `checkpoints/`: the same command run again after a crash
resumes from the last finished epoch. See `kerakd.flags` for every flag.

From Python (the quickstart does this):

>>> results = kerakd.train.run_with_args(["--method=none", "--dataset=synthetic",
...                                       "--epochs=2", "--model_dir=/tmp/run"])
>>> results["best_accuracy"]
"""

import json
import os
import time

import keras
import tensorflow as tf
from absl import app
from absl import flags

from kerakd import data
from kerakd import flags as kerakd_flags
from kerakd import methods
from kerakd import models
from kerakd.distiller import Distiller

RESULTS = "results.json"
RUN_FLAGS = "run.flags"
PROGRESS = "progress.json"
CHECKPOINTS = "checkpoints"
# Written by keras.callbacks.BackupAndRestore after each finished epoch.
CHECKPOINT_EPOCH = os.path.join(CHECKPOINTS, "training_metadata.json")


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


class RunProgress(keras.callbacks.Callback):
    """Saves the best student and the run's progress after every epoch.

    Progress (best and last validation accuracy, wall time) lives in
    `progress.json`, so a resumed run keeps counting where it stopped.

    Args:
        student: the student model to save when validation accuracy improves.
        model_dir: where `best.keras` and `progress.json` go.
    """

    def __init__(self, student, model_dir):
        super().__init__()
        self.student = student
        self.best_path = os.path.join(model_dir, "best.keras")
        self.path = os.path.join(model_dir, PROGRESS)
        self.state = {"epochs_done": 0, "best_accuracy": None, "best_epoch": None,
                      "final_accuracy": None, "final_metrics": {}, "wall_time_s": 0.0}
        if os.path.exists(self.path):
            with open(self.path) as file:
                self.state.update(json.load(file))

    def on_train_begin(self, logs=None):
        self._start = time.time()
        self._before = self.state["wall_time_s"]

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        accuracy = logs.get("val_accuracy")
        best = self.state["best_accuracy"]
        if accuracy is not None and (best is None or accuracy > best):
            temporary = os.path.join(os.path.dirname(self.best_path), "best.tmp.keras")
            self.student.save(temporary)
            os.replace(temporary, self.best_path)
            self.state.update(best_accuracy=accuracy, best_epoch=epoch + 1)
        self.state.update(
            epochs_done=epoch + 1,
            final_accuracy=accuracy,
            final_metrics=logs,
            wall_time_s=self._before + time.time() - self._start,
        )
        _write_json(self.path, self.state)


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


def _strategy(name):
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # All GPUs, or else every (logical) CPU.
        gpus = tf.config.list_logical_devices("GPU")
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(None if gpus else cpus)
    return tf.distribute.MultiWorkerMirroredStrategy()


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


def _claim_model_dir(model_dir, flag_values):
    """Refuses to overwrite a finished run, or to resume a run with other flags.

    Returns:
        The epoch a killed run resumes from (0 for a new run).
    """
    if os.path.exists(os.path.join(model_dir, RESULTS)):
        raise app.UsageError(
            f"--model_dir={model_dir} holds a finished run ({RESULTS}). Use a new "
            "--model_dir, or delete that one to train it again."
        )
    flagfile = os.path.join(model_dir, RUN_FLAGS)
    checkpoint = os.path.join(model_dir, CHECKPOINT_EPOCH)
    if os.path.exists(checkpoint):
        with open(checkpoint) as file:
            resume_epoch = json.load(file)["epoch"]
        before = kerakd_flags.flag_dict(
            kerakd_flags.parse(["kerakd-train", f"--flagfile={flagfile}"]))
        now = kerakd_flags.flag_dict(flag_values)
        changed = sorted(n for n in now if n != "model_dir" and before.get(n) != now[n])
        if changed:
            details = "; ".join(f"--{n}: {before.get(n)} -> {now[n]}" for n in changed)
            raise app.UsageError(
                f"--model_dir={model_dir} holds a run stopped after epoch "
                f"{resume_epoch}, started with other flags ({details}). Resume it "
                f"with --flagfile={flagfile}, or use a new --model_dir."
            )
        return resume_epoch
    os.makedirs(model_dir, exist_ok=True)
    # A run killed before its first checkpoint starts over.
    for stale in (PROGRESS, "best.keras"):
        if os.path.exists(os.path.join(model_dir, stale)):
            os.remove(os.path.join(model_dir, stale))
    with open(flagfile, "w") as file:
        file.write("\n".join(kerakd_flags.flagfile_lines(flag_values)) + "\n")
    return 0


def _load_teacher(path, info, dataset):
    """Loads `--teacher` and checks it reads and predicts what the dataset has."""
    try:
        teacher = keras.models.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - any failure: not a usable model
        raise app.UsageError(
            f"--teacher={path}: cannot load it as a Keras model: {error}"
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


def _make_method(flag_values, num_train):
    """The `--method` with its flags; a `num_data` argument gets the training-set
    size (memory banks have a row per example)."""
    hparams = kerakd_flags.method_hparams(flag_values)
    for name, values in hparams.items():
        if "num_data" in kerakd_flags.method_arguments(name):
            values.setdefault("num_data", num_train)
    names = list(hparams)
    try:
        if len(names) == 1:
            return methods.get(names[0], **hparams[names[0]])
        return methods.get(flag_values.method, **hparams)
    except (TypeError, ValueError) as error:
        raise app.UsageError(f"--method={flag_values.method}: {error}") from error


def _optimizer(flag_values):
    fv = flag_values
    if fv.optimizer == "sgd":
        return keras.optimizers.SGD(fv.learning_rate, momentum=fv.momentum,
                                    nesterov=fv.nesterov)
    if fv.optimizer == "adam":
        return keras.optimizers.Adam(fv.learning_rate)
    # PyTorch's AdamW weight decay is decoupled, as Keras's is.
    return keras.optimizers.AdamW(fv.learning_rate, weight_decay=fv.weight_decay)


def _precision_policy(mixed_precision):
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
    _configure_devices(fv.num_logical_cpus)
    strategy = _strategy(fv.strategy)
    replicas = strategy.num_replicas_in_sync
    if fv.batch_size % replicas:
        raise app.UsageError(
            f"--batch_size={fv.batch_size} does not split evenly over {replicas} "
            f"replicas; use a multiple of {replicas}."
        )
    model_dir = _output_dir(fv.model_dir, strategy)
    source = data.get_source(fv.dataset, fv.data_dir, fv.image_size)
    info = source.info
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(_precision_policy(fv.mixed_precision))
    try:
        keras.utils.set_random_seed(fv.seed)
        with strategy.scope():
            teacher = _load_teacher(fv.teacher, info, fv.dataset) if fv.teacher else None
        resume_epoch = _claim_model_dir(model_dir, fv)
        info = source.prepare().info
        with strategy.scope():
            method = _make_method(fv, info.num_train)
        if method.needs_index and fv.augment in ("mixup", "cutmix"):
            raise app.UsageError(
                f"--augment={fv.augment} mixes examples, but --method={fv.method} "
                "keeps a memory row per training example (needs_index). Use "
                "--augment=standard or none."
            )
        train_ds = data.training_dataset(
            source, fv.batch_size, fv.augment, with_index=method.needs_index,
            repeat=fv.steps_per_epoch is not None, mix_alpha=fv.mix_alpha, seed=fv.seed,
        )
        val_ds = data.validation_dataset(source, fv.batch_size)
        per_replica = fv.batch_size // replicas
        sample_images = next(iter(val_ds.unbatch().batch(per_replica)))[0].numpy()
        with strategy.scope():
            student = models.get(fv.student, info.num_classes, info.image_shape)
            distiller = Distiller(
                student, method, teacher,
                student_taps=kerakd_flags.parse_taps(fv.student_taps),
                teacher_taps=kerakd_flags.parse_taps(fv.teacher_taps),
                weight_decay=0.0 if fv.optimizer == "adamw" else fv.weight_decay,
            )
            # Built before fit: BackupAndRestore restores into built variables.
            distiller.build((per_replica, *info.image_shape))
            distiller.compile(optimizer=_optimizer(fv), jit_compile=fv.jit_compile)
        log_dir = os.path.join(model_dir, "logs")
        progress = RunProgress(student, model_dir)
        callbacks = [
            keras.callbacks.LearningRateScheduler(learning_rate_schedule(
                fv.learning_rate, kerakd_flags.lr_milestones(fv), fv.lr_decay,
                fv.warmup_epochs)),
            keras.callbacks.TensorBoard(log_dir, write_graph=False),
            *method.callbacks(log_dir, sample_images),
            progress,
            # Last: a checkpoint is written once everything else of the epoch is.
            keras.callbacks.BackupAndRestore(
                os.path.join(model_dir, CHECKPOINTS), double_checkpoint=True,
                delete_checkpoint=False),
        ]
        if resume_epoch:
            print(f"kerakd-train: resuming {model_dir} after epoch {resume_epoch}.")
        distiller.fit(train_ds, validation_data=val_ds, epochs=fv.epochs,
                      steps_per_epoch=fv.steps_per_epoch, callbacks=callbacks, verbose=2,
                      shuffle=False)  # the dataset is shuffled
        student.save(os.path.join(model_dir, "student.keras"))
    finally:
        keras.config.set_dtype_policy(previous_policy)
    state = progress.state
    results = {
        "final_accuracy": state["final_accuracy"],
        "best_accuracy": state["best_accuracy"],
        "best_epoch": state["best_epoch"],
        "epochs": fv.epochs,
        "resumed_from_epoch": resume_epoch,
        "wall_time_s": round(state["wall_time_s"], 1),
        "final_metrics": state["final_metrics"],
        "flags": kerakd_flags.flag_dict(fv),
    }
    _write_json(os.path.join(model_dir, RESULTS), results)
    print(f"kerakd-train: validation accuracy {results['final_accuracy']:.4f} "
          f"(best {results['best_accuracy']:.4f}, epoch {results['best_epoch']}); "
          f"outputs in {model_dir}; TensorBoard: tensorboard --logdir {log_dir}")
    return results


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
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every option is a --flag.")
    train(flags.FLAGS)


def run():
    """Entry point of the `kerakd-train` console script."""
    kerakd_flags.define_flags(flags.FLAGS)
    app.run(main)


if __name__ == "__main__":
    run()
