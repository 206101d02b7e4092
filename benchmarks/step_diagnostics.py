"""Step-by-step diagnostics of a distillation run: why does it diverge?

    python benchmarks/step_diagnostics.py --teacher=runs/fmnist/teacher/student.keras \\
        --method=semckd --learning_rate=0.1 --steps=40 [--clip_grad_norm=5]

Trains like `kerakd-train` (SGD with momentum, PyTorch-style weight decay,
the standard augmentation) but one step at a time in eager mode, printing
per step: the total and every weighted term, the gradient norm of the student
and of each group of the method's modules (variables grouped by the name of
the module they belong to, digits dropped: `projector`, `query`, `key`), the
single largest gradient and the largest teacher feature. It stops at the first
non-finite loss. Clipping, when asked, is the Distiller's (`clip_grad_norm`).
The printed values come from a forward pass of their own before the
Distiller's step, so BatchNorm moving statistics move twice per step (what
training-mode steps compute does not depend on them).
"""

import argparse
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kerakd  # noqa: E402
from kerakd import data  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="a teacher .keras file")
    parser.add_argument("--method", default="semckd")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=0.1)
    parser.add_argument("--weight_decay", type=float, default=5e-4)
    parser.add_argument("--clip_grad_norm", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def group_of(variable, method_name):
    """`student`, or the method module a variable belongs to, digits dropped."""
    parts = variable.path.split("/")
    if method_name not in parts:
        return "student"
    rest = parts[parts.index(method_name) + 1:]
    return re.sub(r"_?\d+", "", rest[0]) if len(rest) > 1 else "method"


def main():
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    source = data.get_source(args.dataset, None, None)
    teacher = keras.models.load_model(args.teacher, compile=False)
    info = source.prepare().info
    method = kerakd.methods.get(args.method)
    student = kerakd.models.get(args.student, info.num_classes, info.image_shape)
    distiller = kerakd.Distiller(student, method, teacher, weight_decay=args.weight_decay,
                                 clip_grad_norm=args.clip_grad_norm)
    distiller.compile(keras.optimizers.SGD(args.learning_rate, momentum=0.9), run_eagerly=True)
    distiller.build((args.batch_size, *info.image_shape))
    variables = distiller.trainable_variables
    groups = [group_of(v, method.name) for v in variables]
    batches = data.training_dataset(source, args.batch_size, "standard", repeat=True,
                                    seed=args.seed)
    for step, (images, labels) in zip(range(args.steps), batches):
        with tf.GradientTape() as tape:
            terms = distiller.compute_loss_terms(images, labels, training=True)
            total = sum(terms.values())
        gradients = tape.gradient(total, variables)
        norms = {}
        for name in dict.fromkeys(groups):
            chosen = [g for g, n in zip(gradients, groups) if n == name and g is not None]
            norms[name] = float(tf.linalg.global_norm(chosen)) if chosen else 0.0
        largest = max((float(tf.norm(g)), v.path) for v, g in zip(variables, gradients)
                      if g is not None)
        features = [float(tf.reduce_max(tf.abs(f)))
                    for f in distiller.teacher_features(images).values()]
        print(f"step {step}: total {float(total):.4g} "
              f"terms {{{', '.join(f'{k}: {float(v):.4g}' for k, v in terms.items())}}} "
              f"grad norms {{{', '.join(f'{k}: {v:.3g}' for k, v in norms.items())}}} "
              f"largest {largest[1]} {largest[0]:.3g} "
              f"teacher |f| max {[round(f, 1) for f in features]}", flush=True)
        if not np.isfinite(float(total)):
            break
        distiller.train_on_batch(images, labels)  # the Distiller's own step


if __name__ == "__main__":
    main()
