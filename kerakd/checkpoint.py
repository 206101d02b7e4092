"""The checkpoint of a `kerakd-train` run: what a killed run resumes from.

After every epoch `RunProgress` commits, in `<model_dir>/checkpoints/`, the
model's weights, the states of its random generators and the run's progress
as one record (`checkpoint.json`); `read_checkpoint` reads it back.

Keras's `keras.callbacks.BackupAndRestore` does not do enough for an exact
resume, in four ways:

- Weights and progress are not committed together. It overwrites the
  weights file in place and then writes the epoch in a second file, so a
  kill between the two pairs new weights with the old epoch (or leaves a
  truncated weights file). Here the weights are written under a new name and
  `checkpoint.json`, which names them, is replaced atomically last: any kill
  leaves a complete, matching pair.
- It restores the epoch, not the data. `fit(initial_epoch=...)` starts the
  dataset over from its first batch; a resumed `kerakd-train` run seeks the
  training pipeline to the batch an uninterrupted run would read next
  (`data.training_dataset(start_batch=...)`, from the committed epoch).
- It leaves out the random generators. `keras.random.SeedGenerator` states
  (CRD's negatives, LFMA's cutout masks, AID's rotations) are variables but
  not weights, so weights files skip them; here they are saved beside.
- It keeps no progress and deletes its backup when `fit` ends. A run's
  `results.json` needs the per-epoch history, the best and last validation
  accuracy and the wall time of every attempt, which the commit holds.
"""

import glob
import json
import os
import time

import keras
import numpy as np

from kerakd import models

CHECKPOINTS = "checkpoints"
# The commit point of a checkpoint: names the epoch, its weights file and the
# run's progress.
CHECKPOINT = os.path.join(CHECKPOINTS, "checkpoint.json")


def write_json(path, content):
    """Writes JSON atomically (a crash leaves the old file or the new one).

    Args:
        path: the file to write.
        content: what `json.dump` writes.
    """
    with open(path + ".tmp", "w") as file:
        json.dump(content, file, indent=2)
    os.replace(path + ".tmp", path)


def read_checkpoint(model_dir):
    """The last committed checkpoint of `model_dir` (see `RunProgress`), or None.

    Args:
        model_dir: a run's directory.

    Returns:
        The content of `checkpoints/checkpoint.json`: `{"epoch", "weights",
        "random_state", "progress"}`.
    """
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
        write_json(os.path.join(self.checkpoint_dir, os.path.basename(CHECKPOINT)),
                   {"epoch": epoch, "weights": name, "random_state": random_state,
                    "progress": self.state})
        for path in glob.glob(os.path.join(self.checkpoint_dir, "epoch-*")):
            if os.path.basename(path) not in (name, random_state):
                os.remove(path)  # older epochs, or a save a crash cut short

    def _save_best(self):
        temporary = os.path.join(os.path.dirname(self.best_path), "best.tmp.keras")
        models.core_keras(self.student).save(temporary)
        os.replace(temporary, self.best_path)
