"""Faulty methods for the reliability tests, and `kerakd-train` with faults injected.

    python tests/reliability_run.py [--kill_at=EPOCH,BATCH] [--crash_saving_epoch=N] \\
        -- KERAKD-TRAIN FLAGS

Runs `kerakd-train` (its console entry point, exit status included) with the
methods below registered. `--kill_at` SIGKILLs the process after that batch
(1-based), a crash with no clean-up at all; `--crash_saving_epoch` makes the
checkpoint save of that epoch write half of its file and raise.
"""

import os
import signal
import sys

import keras
from keras import ops

from kerakd import losses
from kerakd import methods
from kerakd.methods.base import Method, MethodOutput


class NanAt(Method):
    """Cross-entropy, plus a `poison` term that is NaN on some training batches.

    Args:
        bad_steps: the training batches (from 0, counted over the whole run
            and kept in checkpoints) whose `poison` term is NaN.
    """

    requires_teacher = False

    def __init__(self, bad_steps=(0,), **kwargs):
        super().__init__(**kwargs)
        self.bad_steps = tuple(bad_steps)
        self.term_weights = {"ce": 1.0, "poison": 1.0}

    def build(self, spec):
        super().build(spec)
        self.batches_seen = self.add_weight(shape=(), initializer="zeros",
                                            trainable=False, name="batches_seen")

    def call(self, data, training=False):
        poison = ops.zeros(())
        if training:
            bad = ops.any(ops.equal(self.batches_seen, ops.convert_to_tensor(
                [float(s) for s in self.bad_steps])))
            poison = ops.where(bad, float("nan"), 0.0)
            self.batches_seen.assign_add(1.0)
        return MethodOutput(losses={
            "ce": losses.cross_entropy(data.labels, data.student_logits), "poison": poison})


class _ChangeTeacher(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        weight = self.model.teacher.weights[0]
        weight.assign(weight + 1.0)


class TeacherTamper(Method):
    """Cross-entropy, with a callback that changes the teacher after training.

    Args:
        weight: weight of the cross-entropy.
    """

    def __init__(self, weight=1.0, **kwargs):
        super().__init__(**kwargs)
        self.term_weights = {"ce": weight}

    def call(self, data, training=False):
        return MethodOutput(losses={"ce": losses.cross_entropy(data.labels,
                                                               data.student_logits)})

    def callbacks(self, log_dir, sample_images):
        return [_ChangeTeacher()]


FAULTY_METHODS = {"nan_at": NanAt, "teacher_tamper": TeacherTamper}


class _KillAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if (self._epoch, batch + 1) == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def _kill_at(epoch, batch):
    fit = keras.Model.fit

    def fit_then_die(self, *args, callbacks=None, **kwargs):
        return fit(self, *args, callbacks=[*(callbacks or []), _KillAt(epoch, batch)],
                   **kwargs)

    keras.Model.fit = fit_then_die


def _crash_saving(epoch):
    save = keras.Model.save_weights

    def save_half_then_fail(self, path, *args, **kwargs):
        save(self, path, *args, **kwargs)
        if os.path.basename(path).startswith(f"epoch-{epoch}."):
            with open(path, "r+b") as file:
                file.truncate(os.path.getsize(path) // 2)
            raise OSError(f"simulated crash while writing {path}")

    keras.Model.save_weights = save_half_then_fail


def main(argv):
    split = argv.index("--")
    for option in argv[1:split]:
        name, _, value = option.partition("=")
        if name == "--kill_at":
            _kill_at(*(int(v) for v in value.split(",")))
        elif name == "--crash_saving_epoch":
            _crash_saving(int(value))
        else:
            raise SystemExit(f"unknown option {option}")
    for name, factory in FAULTY_METHODS.items():
        methods.registry.register(name)(factory)
    from kerakd import train

    sys.argv = [argv[0], *argv[split + 1:]]
    train.run()


if __name__ == "__main__":
    main(sys.argv)
