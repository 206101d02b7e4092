"""Quickstart: a teacher, a plain student and a distilled student on Fashion-MNIST.

    python -m kerakd.quickstart                 # distills with kd
    python -m kerakd.quickstart --method=at     # reuses the teacher and plain student

Three runs of `kerakd.train` (the code of `kerakd-train`) under --output_dir:
`teacher` (resnet14 trained alone), `student` (resnet8 trained alone) and
`<method>` (resnet8 distilled from the teacher). To stay within a few minutes
on two CPU cores, each run sees only part of the training set: the teacher
2 epochs of 100 batches of 128 images (25,600 images, 0.43 of the set), the
students 2 epochs of 50 batches. All are evaluated on the full 10,000-image
test set. A finished run found under --output_dir is reused.
"""

import json
import os

from absl import app
from absl import flags

from kerakd import flags as kerakd_flags
from kerakd import train

TEACHER, STUDENT = "resnet14", "resnet8"
COMMON = ["--dataset=fashion_mnist", "--epochs=2", "--batch_size=128",
          "--learning_rate=0.1", "--lr_milestones=1", "--weight_decay=5e-4"]
STEPS = {"teacher": 100, "student": 50}

FLAGS = flags.FLAGS
flags.DEFINE_string("method", "kd", "Method that distills the student.")
flags.DEFINE_string("output_dir", "runs/quickstart", "Where the three runs go.")
flags.DEFINE_string("data_dir", None, "Directory of the Fashion-MNIST IDX files "
                    "(default: the Debian package's, else a tfds download).")


def train_once(model_dir, args):
    """`kerakd-train ARGS --model_dir=...`, or the results of a finished run
    of the same flags there.

    Raises:
        absl.app.UsageError: `model_dir` holds a finished run of other flags.
    """
    args = [*args, f"--model_dir={model_dir}"]
    results = os.path.join(model_dir, train.RESULTS)
    if os.path.exists(results):
        changed = train.flag_changes(model_dir, kerakd_flags.parse(["kerakd-train", *args]))
        if changed:
            raise app.UsageError(
                f"{model_dir} holds a finished run of other flags ({'; '.join(changed)}). "
                "Move it away, or pass another --output_dir.")
        print(f"quickstart: reusing the finished run in {model_dir}.")
        with open(results) as file:
            return json.load(file)
    return train.run_with_args(args)


def main(argv):
    del argv
    common = COMMON + ([f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else [])
    teacher_dir = os.path.join(FLAGS.output_dir, "teacher")
    runs = [
        (f"teacher ({TEACHER})", teacher_dir,
         ["--method=none", f"--student={TEACHER}", f"--steps_per_epoch={STEPS['teacher']}"]),
        (f"student ({STUDENT}, alone)", os.path.join(FLAGS.output_dir, "student"),
         ["--method=none", f"--student={STUDENT}", f"--steps_per_epoch={STEPS['student']}"]),
        (f"student ({STUDENT}, {FLAGS.method})", os.path.join(FLAGS.output_dir, FLAGS.method),
         [f"--method={FLAGS.method}", f"--student={STUDENT}",
          f"--steps_per_epoch={STEPS['student']}"]
         + ([f"--teacher={os.path.join(teacher_dir, 'student.keras')}"]
            if kerakd_flags.requires_teacher(FLAGS.method) else [])),
    ]
    rows = [(label, train_once(model_dir, common + args)) for label, model_dir, args in runs]
    width = max(len(label) for label, _ in rows)
    print("\nFashion-MNIST test accuracy (a short schedule; see `kerakd.quickstart`)")
    print(f"{'model'.ljust(width)}  accuracy  wall time")
    for label, results in rows:
        print(f"{label.ljust(width)}  {results['final_accuracy']:.4f}    "
              f"{results['wall_time_s']:.0f} s")
    print(f"\nTensorBoard: tensorboard --logdir {FLAGS.output_dir}")


if __name__ == "__main__":
    app.run(main)
