"""One `kerakd-train` run, after `kerakd.train` has checked its flags.

`kerakd.train` (the command, without TensorFlow) parses and checks the
flags, then imports this module, which loads TensorFlow and the library, and
calls `train`. Everything a run does is here: data, teacher, student and
method, the Distiller, checkpoints, logs, results and the exported student.
"""

import hashlib
import os
import re
import shlex
import sys

import keras
import tensorflow as tf
from absl import app

from kerakd import data
from kerakd import devices
from kerakd import flags as kerakd_flags
from kerakd import methods
from kerakd import models
from kerakd import optimization
from kerakd import run_directory
from kerakd.callbacks import NonFiniteLossError, StopOnSkippedBatches
from kerakd.checkpoint import CHECKPOINTS, RunProgress, read_checkpoint, write_json
from kerakd.data import sources as data_sources
from kerakd.distiller import Distiller
from kerakd.distribute import synchronize_batchnorm
from kerakd.progress import StepLines, console_verbosity
from kerakd.run_directory import RESULTS, RUN_FLAGS



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
    hyperparameter (`--fitnet_stage=7`), `--batch_size` and the replica
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


def train(flag_values):
    """Runs one training as the flags say (`kerakd.train`'s docstring).

    Args:
        flag_values: parsed `absl.flags.FlagValues` with kerakd's flags, which
            `kerakd.flags.check_flags` and `check_files` have passed
            (`kerakd.train.train` checks them, then calls this).

    Returns:
        The content of `results.json`.

    Raises:
        absl.app.UsageError: a flag that turns out bad once the data, the
            teacher or the method are built; the message names the flag.
    """
    fv = flag_values
    if fv.strategy != "multi_worker":  # other workers write elsewhere
        run_directory.check_not_in_use(fv.model_dir)
    devices.configure_devices(fv.num_logical_cpus)
    strategy = devices.strategy(fv.strategy, fv.tpu)
    replicas = _replicas(strategy, fv.batch_size)
    model_dir = run_directory.worker_dir(fv.model_dir, strategy)
    source = _data_source(fv)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(devices.precision_policy(fv.mixed_precision))
    lock = None
    try:
        keras.utils.set_random_seed(fv.seed)
        if fv.deterministic:
            tf.config.experimental.enable_op_determinism()
        with strategy.scope():
            teacher = _load_teacher(fv.teacher, source.info, fv.dataset) if fv.teacher else None
        teacher_digest = teacher and weights_digest(teacher)
        info = source.prepare().info
        steps_per_epoch = _steps_per_epoch(fv, info)
        with strategy.scope():
            method = _make_method(fv, info.num_train)
        _check_augmentation(fv, method)
        with strategy.scope():
            student = models.get(fv.student, info.num_classes, info.image_shape)
            if fv.sync_batchnorm:
                student = synchronize_batchnorm(student)
            distiller = _make_distiller(fv, student, method, teacher)
            # Built before fit: a resumed run restores into built variables.
            _build_distiller(distiller, fv, info.image_shape, replicas)
            distiller.compile(optimizer=optimization.optimizer(fv), jit_compile=fv.jit_compile)
        # Every check has passed: only now is --model_dir touched, under its lock.
        lock = run_directory.take_lock(model_dir)
        resume_epoch = run_directory.claim(model_dir, fv)
        train_ds = data.training_dataset(
            source, fv.batch_size, fv.augment, with_index=method.needs_index,
            views=("weak", "strong") if method.needs_strong_view else ("weak",),
            repeat=True, mix_alpha=fv.mix_alpha, seed=fv.seed,
            shuffle_files=not fv.deterministic,
            start_batch=resume_epoch * steps_per_epoch,
        )
        val_ds = data.validation_dataset(source, fv.batch_size)
        sample_images = next(iter(val_ds.unbatch().batch(fv.batch_size // replicas)))[0].numpy()
        log_dir = os.path.join(model_dir, "logs")
        progress = RunProgress(student, model_dir)
        verbose = console_verbosity()
        callbacks = _callbacks(fv, method, steps_per_epoch, log_dir, sample_images,
                               progress, verbose)
        if resume_epoch:
            print(f"kerakd-train: resuming {model_dir} after epoch {resume_epoch}.")
        try:
            distiller.fit(train_ds, validation_data=val_ds, epochs=fv.epochs,
                          initial_epoch=resume_epoch, steps_per_epoch=steps_per_epoch,
                          callbacks=callbacks, verbose=verbose,
                          shuffle=False)  # the dataset is shuffled
        except NonFiniteLossError as error:
            raise NonFiniteLossError(f"{error} {_what_is_kept(model_dir)}") from error
        _check_teacher_unchanged(fv, teacher, teacher_digest)
        models.core_keras(student).save(os.path.join(model_dir, "student.keras"))
        results = _write_results(model_dir, fv, progress.state, resume_epoch, info)
    finally:
        keras.config.set_dtype_policy(previous_policy)
        run_directory.release_lock(model_dir, lock)
    print(f"kerakd-train: validation accuracy {results['final_accuracy']:.4f} "
          f"(best {results['best_accuracy']:.4f}, epoch {results['best_epoch']}); "
          f"outputs in {model_dir}; TensorBoard: tensorboard --logdir {log_dir}")
    return results


def _replicas(strategy, batch_size):
    """The strategy's replicas, over which `--batch_size` must split evenly."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise app.UsageError(
            f"--batch_size={batch_size} does not split evenly over {replicas} "
            f"replicas; use a multiple of {replicas}."
        )
    return replicas


def _data_source(flag_values):
    """The `--dataset` source (not read yet); a missing dataset names the flag."""
    fv = flag_values
    try:
        return data.get_source(fv.dataset, fv.data_dir, fv.image_size)
    except data_sources.DataError as error:
        raise app.UsageError(str(error)) from error


def _check_augmentation(flag_values, method):
    """Refuses `--augment=mixup/cutmix` for a method that follows single
    examples (a memory row per example, or a second view of it)."""
    fv = flag_values
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


def _callbacks(flag_values, method, steps_per_epoch, log_dir, sample_images, progress,
               verbose):
    """The callbacks of `fit`, in the order they must run."""
    fv = flag_values
    callbacks = [
        # First: a diverged epoch stops before anything logs it.
        *([StopOnSkippedBatches(steps_per_epoch, fv.max_skipped_share)]
          if fv.nan_policy == "skip_batch" else []),
        keras.callbacks.LearningRateScheduler(optimization.learning_rate_schedule(
            fv.learning_rate, kerakd_flags.lr_milestones(fv), fv.lr_decay,
            fv.warmup_epochs)),
        keras.callbacks.TensorBoard(log_dir, write_graph=False),
        *method.callbacks(log_dir, sample_images),
        # Last: the checkpoint is committed once the rest of the epoch is done.
        progress,
    ]
    if verbose == 2 and fv.log_every_steps:
        callbacks.insert(-1, StepLines(fv.log_every_steps, steps_per_epoch))
    return callbacks


def _check_teacher_unchanged(flag_values, teacher, digest):
    """Refuses to save the student of a run whose method changed its teacher."""
    if teacher is not None and weights_digest(teacher) != digest:
        raise RuntimeError(
            f"--teacher={flag_values.teacher}: the teacher's weights changed during the "
            f"run (SHA-256 {digest[:12]}... at load, "
            f"{weights_digest(teacher)[:12]}... now); a method must not update "
            "its teacher. The student is not saved; fix the method."
        )


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
    write_json(os.path.join(model_dir, RESULTS), results)
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


def run_command(flag_values):
    """`train` for the command line: a NaN stop exits 1 with its message,
    Ctrl-C exits 130 saying where the last checkpoint is and how to resume."""
    try:
        train(flag_values)
    except NonFiniteLossError as error:
        raise SystemExit(f"kerakd-train: {error}") from error  # exit status 1
    except KeyboardInterrupt:
        print(_interrupted_message(flag_values.model_dir), file=sys.stderr)
        raise SystemExit(130) from None
