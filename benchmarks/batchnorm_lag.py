"""Is a low validation accuracy the weights, or BatchNorm's moving statistics?

    python benchmarks/batchnorm_lag.py --models=runs/a/student.keras,runs/b/student.keras
    python benchmarks/batchnorm_lag.py --methods=none,lfma,frskd --steps=235 \\
        --runs_dir=runs/batchnorm_lag

Evaluates each saved student on the Fashion-MNIST test set twice: in
inference mode (the moving statistics, as the validation of `kerakd-train`
does) and with BatchNorm normalising each batch of `--eval_batch_size`
examples by its own statistics (the current weights, without the moving
averages). A large gap means the moving statistics do not describe the
current weights: they average the batch statistics of the last ~10 steps
(momentum 0.9), which lag when the weights move fast. With `--methods`, it
first trains each method's `configs/fmnist/<method>.flags` for `--steps`
steps at its initial learning rate (the committed teacher for methods that
need one), as the first epoch of the accuracy benchmark does.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from kerakd import data  # noqa: E402
from kerakd import flags as kerakd_flags  # noqa: E402
from kerakd import train  # noqa: E402

TEACHER = os.path.join(ROOT, "benchmarks", "teachers", "resnet20_fashion_mnist.keras")

FLAGS = flags.FLAGS
flags.DEFINE_list("models", [], "Saved students (.keras) to evaluate.")
flags.DEFINE_list("methods", [], "Methods to train first (configs/fmnist/<method>.flags).")
flags.DEFINE_integer("steps", 235, "Training steps of each --methods run (235: one epoch "
                     "of the accuracy benchmark).")
flags.DEFINE_integer("seed", 0, "Seed of the --methods runs.")
flags.DEFINE_string("runs_dir", "runs/batchnorm_lag", "Where the --methods runs go.")
flags.DEFINE_integer("eval_batch_size", 500, "Examples per batch for batch statistics.")


def train_for_steps(method):
    """A `--steps`-step run of the method's fmnist config; its student file."""
    model_dir = os.path.join(FLAGS.runs_dir, f"{method}_{FLAGS.steps}_seed{FLAGS.seed}")
    args = [f"--flagfile={os.path.join(ROOT, 'configs', 'fmnist', method + '.flags')}",
            "--epochs=1", f"--steps_per_epoch={FLAGS.steps}", "--lr_milestones=",
            f"--seed={FLAGS.seed}", f"--model_dir={model_dir}"]
    if kerakd_flags.requires_teacher(method):
        args.append(f"--teacher={TEACHER}")
    if not os.path.exists(os.path.join(model_dir, "student.keras")):
        train.run_with_args(args)
    return os.path.join(model_dir, "student.keras")


def accuracies(path, batches):
    """Test accuracy with the moving statistics, then with each batch's own."""
    model = keras.models.load_model(path)
    total = sum(len(y) for _, y in batches)
    # Inference first: every training-mode call moves the moving statistics.
    moving = sum(int((np.argmax(model(x, training=False), -1) == y).sum())
                 for x, y in batches)
    own = sum(int((np.argmax(model(x, training=True), -1) == y).sum())
              for x, y in batches)
    return {"model": path, "moving_statistics": moving / total,
            "batch_statistics": own / total, "examples": total}


def main(argv):
    del argv
    paths = list(FLAGS.models) + [train_for_steps(m) for m in FLAGS.methods]
    _, val_ds, _ = data.load("fashion_mnist", batch_size=FLAGS.eval_batch_size)
    batches = [(x, np.asarray(y)) for x, y in val_ds]
    print("| model | accuracy, moving statistics (%) | accuracy, batch statistics (%) |")
    print("|---|---|---|")
    for path in paths:
        result = accuracies(path, batches)
        print(f"| `{os.path.relpath(path)}` | {100 * result['moving_statistics']:.2f} "
              f"| {100 * result['batch_statistics']:.2f} |", flush=True)
        print(json.dumps(result), file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
