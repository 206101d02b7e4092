"""Quickstart: a plain student and a distilled student on Fashion-MNIST.

    python -m kerakd.quickstart                   # distills with kd
    python -m kerakd.quickstart --method=at       # reuses the plain student
    python -m kerakd.quickstart --train_teacher   # trains a teacher first

The teacher is the project's committed resnet20
(`benchmarks/teachers/resnet20_fashion_mnist.keras`, made by
`configs/fmnist/teacher.flags`; its JSON gives its test accuracy). Two runs
of `kerakd.train` (the code of `kerakd-train`) go under --output_dir:
`student` (resnet8 trained alone) and `<method>` (resnet8 distilled from the
teacher). To stay within a few minutes on two CPU cores each sees part of
the training set: 2 epochs of 100 batches of 128 images (25,600 images, 0.43
of the set). With `--train_teacher` a resnet14 teacher is trained the same
way first (`teacher`), as a user without the committed file would. All are
evaluated on the full 10,000-image test set. A finished run found under
--output_dir is reused.
"""

import json
import os

from absl import app
from absl import flags

from kerakd import flags as kerakd_flags
from kerakd import run_directory
from kerakd import train

TEACHER, STUDENT = "resnet14", "resnet8"
COMMON = ["--dataset=fashion_mnist", "--epochs=2", "--batch_size=128",
          "--learning_rate=0.1", "--lr_milestones=1", "--weight_decay=5e-4"]
STEPS = {"teacher": 100, "student": 100}
COMMITTED_TEACHER = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "benchmarks", "teachers", "resnet20_fashion_mnist")

FLAGS = flags.FLAGS
flags.DEFINE_string("method", "kd", "Method that distills the student.")
flags.DEFINE_string("output_dir", "runs/quickstart", "Where the three runs go.")
flags.DEFINE_string("data_dir", None, "Directory of the Fashion-MNIST IDX files "
                    "(default: the Debian package's, else a tfds download).")
flags.DEFINE_bool("train_teacher", False, f"Train a {TEACHER} teacher (2 epochs of "
                  f"{STEPS['teacher']} batches) instead of using the committed resnet20.")


def train_once(model_dir, args):
    """`kerakd-train ARGS --model_dir=...`, or the results of a finished run
    of the same flags there.

    Raises:
        absl.app.UsageError: `model_dir` holds a finished run of other flags.
    """
    args = [*args, f"--model_dir={model_dir}"]
    results = os.path.join(model_dir, run_directory.RESULTS)
    if os.path.exists(results):
        changed = run_directory.flag_changes(model_dir, kerakd_flags.parse(["kerakd-train", *args]))
        if changed:
            raise app.UsageError(
                f"{model_dir} holds a finished run of other flags ({'; '.join(changed)}). "
                "Move it away, or pass another --output_dir.")
        print(f"quickstart: reusing the finished run in {model_dir}.")
        with open(results) as file:
            return json.load(file)
    return train.run_with_args(args)


def committed_teacher():
    """`(label, results, file)` of the committed teacher."""
    if not os.path.exists(COMMITTED_TEACHER + ".keras"):
        raise app.UsageError(
            f"The committed teacher {COMMITTED_TEACHER}.keras is missing (run the "
            "quickstart from a clone of the repository), or pass --train_teacher.")
    with open(COMMITTED_TEACHER + ".json") as file:
        record = json.load(file)
    return "teacher (resnet20, committed)", record, COMMITTED_TEACHER + ".keras"


def main(argv):
    del argv
    common = COMMON + ([f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else [])
    rows = []
    if FLAGS.train_teacher:
        teacher_dir = os.path.join(FLAGS.output_dir, "teacher")
        rows.append((f"teacher ({TEACHER})", train_once(teacher_dir, common + [
            "--method=none", f"--student={TEACHER}", f"--steps_per_epoch={STEPS['teacher']}"])))
        teacher_file = os.path.join(teacher_dir, "student.keras")
    else:
        label, record, teacher_file = committed_teacher()
        rows.append((label, record))
    # Distilled students of each teacher go to their own directory.
    distilled_dir = FLAGS.method if FLAGS.train_teacher else f"{FLAGS.method}_resnet20"
    runs = [
        (f"student ({STUDENT}, alone)", os.path.join(FLAGS.output_dir, "student"),
         ["--method=none", f"--student={STUDENT}", f"--steps_per_epoch={STEPS['student']}"]),
        (f"student ({STUDENT}, {FLAGS.method})", os.path.join(FLAGS.output_dir, distilled_dir),
         [f"--method={FLAGS.method}", f"--student={STUDENT}",
          f"--steps_per_epoch={STEPS['student']}"]
         + ([f"--teacher={teacher_file}"] if kerakd_flags.requires_teacher(FLAGS.method) else [])),
    ]
    rows += [(label, train_once(model_dir, common + args)) for label, model_dir, args in runs]
    width = max(len(label) for label, _ in rows)
    print("\nFashion-MNIST test accuracy (a short schedule; see `kerakd.quickstart`)")
    print(f"{'model'.ljust(width)}  accuracy  wall time")
    for label, results in rows:
        print(f"{label.ljust(width)}  {results['final_accuracy']:.4f}    "
              f"{results['wall_time_s']:.0f} s")
    print(f"\nTensorBoard: tensorboard --logdir {FLAGS.output_dir}")


if __name__ == "__main__":
    app.run(main)
