"""The size of each loss term's gradient on the student, at the start of training.

    python benchmarks/term_gradients.py --method=mlkd --batch_size=128
    python benchmarks/term_gradients.py --method=kd --flag=kd_temperature=4

One batch of the dataset's training pipeline (the views the method needs),
a freshly initialised student and the committed teacher of
`benchmarks/teachers/`: per term of the method, its weighted value and the
global norm of its gradient on the student's trainable variables. A term
whose gradient dwarfs the label cross-entropy's sets the step size of the
whole objective (docs/methods/mlkd.md: MLKD's `cc` on Fashion-MNIST).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import kerakd  # noqa: E402
from kerakd import data  # noqa: E402

TEACHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "teachers",
                       "resnet20_fashion_mnist.keras")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="mlkd")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--teacher", default=TEACHER, help="a teacher .keras file")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flag", action="append", default=[],
                        help="a method argument, `name=value` (e.g. cc_weight=0.00225)")
    args = parser.parse_args()
    kerakd.import_all()
    arguments = {}
    for item in args.flag:
        name, _, value = item.partition("=")
        arguments[name] = float(value)
    method = kerakd.methods.get(args.method, **arguments)
    source = data.get_source(args.dataset, None, None).prepare()
    views = ("weak", "strong") if method.needs_strong_view else ("weak",)
    images, labels = next(iter(data.training_dataset(
        source, args.batch_size, seed=args.seed, views=views)))
    keras.utils.set_random_seed(args.seed)
    student = kerakd.models.get(args.student, source.info.num_classes, source.info.image_shape)
    teacher = keras.models.load_model(args.teacher, compile=False)
    distiller = kerakd.Distiller(student, method, teacher if method.requires_teacher else None)
    distiller.build((args.batch_size, *source.info.image_shape))
    names = list(distiller.compute_loss_terms(images, labels, training=True))
    for name in names:
        with tf.GradientTape() as tape:
            value = distiller.compute_loss_terms(images, labels, training=True)[name]
        gradients = [g for g in tape.gradient(value, student.trainable_variables)
                     if g is not None]
        print(f"{args.method} B={args.batch_size} {name:12s} weighted value "
              f"{float(value):10.4f}  gradient norm {float(tf.linalg.global_norm(gradients)):10.4f}",
              flush=True)


if __name__ == "__main__":
    main()
