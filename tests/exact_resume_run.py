"""Exact resume of every registered method (a subprocess: op determinism is process-wide).

    python tests/exact_resume_run.py OUT.json [METHOD ...]

For each method: an uninterrupted `kerakd-train` run of 2 epochs, whose
directory is copied the moment epoch 1 is committed (what a run killed
during epoch 2 leaves), and the copy resumed. Writes, per method, the
largest difference between the two runs' final student weights and whether
their per-epoch histories are equal.
"""

import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kerakd  # noqa: E402
from kerakd import checkpoint  # noqa: E402
from kerakd import train  # noqa: E402

COMMON = ["--dataset=synthetic", "--student=resnet8", "--batch_size=8", "--steps_per_epoch=2",
          "--epochs=2", "--lr_milestones=", "--deterministic"]


def weights(model_dir):
    return keras.models.load_model(os.path.join(model_dir, "student.keras")).get_weights()


def main():
    out_path, names = sys.argv[1], sys.argv[2:] or kerakd.methods.available()
    root = tempfile.mkdtemp()
    # A frozen teacher of the synthetic data's classes and images, saved as a
    # run exports its student; untrained: what it predicts plays no part in
    # whether a resumed run repeats the uninterrupted one.
    teacher = os.path.join(root, "teacher.keras")
    keras.utils.set_random_seed(0)
    kerakd.models.core_keras(kerakd.models.get("resnet8", 4, (16, 16, 3))).save(teacher)
    commit = checkpoint.RunProgress._commit
    snapshot = {}

    def commit_and_copy(self, epoch):
        commit(self, epoch)
        if epoch == 1 and snapshot.get("to"):  # a kill during epoch 2 leaves this
            shutil.copytree(os.path.dirname(self.checkpoint_dir), snapshot.pop("to"))

    checkpoint.RunProgress._commit = commit_and_copy
    results = {}
    for name in names:
        try:
            args = [f"--method={name}", *COMMON]
            if kerakd.flags.requires_teacher(name):
                args.append(f"--teacher={teacher}")
            whole, killed = os.path.join(root, name), os.path.join(root, f"{name}-killed")
            snapshot["to"] = killed
            first = train.run_with_args([*args, f"--model_dir={whole}"])
            keras.backend.clear_session()
            second = train.run_with_args([*args, f"--model_dir={killed}"])
            keras.backend.clear_session()
            results[name] = {
                "resumed_from_epoch": second["resumed_from_epoch"],
                "same_history": first["history"] == second["history"],
                "weight_diff": max(float(np.max(np.abs(a - b)))
                                   for a, b in zip(weights(whole), weights(killed), strict=True)),
            }
        except Exception as error:  # reported per method; the test fails on it
            results[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
    with open(out_path, "w") as file:
        json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
