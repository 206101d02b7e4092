"""How sharp a teacher's soft targets are, with and without logit standardisation.

    python benchmarks/soft_targets.py
    python benchmarks/soft_targets.py --targets=raw:4,ls:2,ls:1 --examples=2000

For each `<logits>:<temperature>` of `--targets` (`raw`: the teacher's
logits, as KD reads them; `ls`: standardised per example as LS does,
`kerakd.losses.standardize_logits`), the mean over the first `--examples`
test examples of the target's largest probability and of its probability
of the true label. A standardised logit is at most `(K - 1) / sqrt(K)`
(with LS's unbiased deviation: 2.85 for 10 classes, 9.90 for 100), so LS's targets at a given temperature are far
softer on a dataset of few classes than on CIFAR-100
(docs/methods/kd.md).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kerakd  # noqa: E402
from kerakd import data  # noqa: E402
from kerakd import losses  # noqa: E402

TEACHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "teachers",
                       "resnet20_fashion_mnist.keras")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=TEACHER, help="a teacher .keras file")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--targets", default="raw:4,ls:2,ls:1,raw:1",
                        help="comma-separated <raw|ls>:<temperature>")
    args = parser.parse_args()
    kerakd.import_all()
    source = data.get_source(args.dataset, None, None).prepare()
    images, labels = next(iter(data.validation_dataset(source, args.examples)))
    teacher = keras.models.load_model(args.teacher, compile=False)
    logits = teacher.predict(images, verbose=0)
    labels = labels.numpy()
    standardized = np.asarray(losses.standardize_logits(logits))
    classes = logits.shape[-1]
    print(f"{args.dataset}: {len(labels)} test examples, {classes} classes; largest "
          f"standardised logit: mean {standardized.max(-1).mean():.3f}, bound "
          f"(K - 1) / sqrt(K) = {(classes - 1) / np.sqrt(classes):.3f}")
    for target in args.targets.split(","):
        kind, _, temperature = target.partition(":")
        values = {"raw": logits, "ls": standardized}[kind] / float(temperature)
        probabilities = np.asarray(keras.ops.softmax(values, axis=-1), dtype="float64")
        print(f"{kind} T={float(temperature):g}: mean top probability "
              f"{probabilities.max(-1).mean():.3f}, mean probability of the label "
              f"{probabilities[np.arange(len(labels)), labels].mean():.3f}")


if __name__ == "__main__":
    main()
