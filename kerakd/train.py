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

The flags, the teacher file, `--data_dir` and `--model_dir` are checked
before TensorFlow loads, so that a mistake is reported in a second; the run
itself is `kerakd.training`.

From Python (the quickstart does this), here one short epoch on generated
images:

>>> import kerakd.train
>>> results = kerakd.train.run_with_args([
...     "--method=none", "--dataset=synthetic", "--student=resnet8", "--batch_size=8",
...     "--epochs=1", "--steps_per_epoch=2", "--lr_milestones=", "--model_dir=run"])
2/2 - ...s/step - accuracy: ... - val_accuracy: ... - learning_rate: 0.0500
kerakd-train: validation accuracy ... (best ..., epoch 1); outputs in run; TensorBoard: tensorboard --logdir run/logs
>>> sorted(results)
['best_accuracy', 'best_epoch', 'epochs', 'final_accuracy', 'final_metrics', 'flags', 'history',
 'resumed_from_epoch', 'student_input', 'wall_time_s']
>>> results["best_epoch"], results["flags"]["student"]
(1, 'resnet8')
"""

import importlib
import sys

from absl import app
from absl import flags

from kerakd import flags as kerakd_flags

# Names of this module before the run's body moved to `kerakd.training`, and
# their homes (loaded on first use: this module imports no TensorFlow).
_MOVED = {
    "RESULTS": "kerakd.run_directory",
    "RUN_FLAGS": "kerakd.run_directory",
    "flag_changes": "kerakd.run_directory",
    "read_checkpoint": "kerakd.checkpoint",
    "precision_policy": "kerakd.devices",
}


def __getattr__(name):
    if name not in _MOVED:
        raise AttributeError(f"module 'kerakd.train' has no attribute '{name}'")
    return getattr(importlib.import_module(_MOVED[name]), name)


def _checked(flag_values):
    """`kerakd.training` once the flags, files and paths have passed the checks
    that need no TensorFlow; only then does TensorFlow load (seconds to a
    minute), so that a bad flag fails at once."""
    kerakd_flags.check_flags(flag_values)
    kerakd_flags.check_files(flag_values)
    from kerakd import training

    return training


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
    return _checked(flag_values).train(flag_values)


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
    _checked(flags.FLAGS).run_command(flags.FLAGS)


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
