"""Dataset names and files `kerakd-train` accepts, known without TensorFlow.

`kerakd.flags` checks `--dataset`, `--data_dir` and `--augment` with these
before TensorFlow loads; `kerakd.data.sources` and `kerakd.data.pipeline`
read the data they name.

Example:

>>> from kerakd.data import names
>>> names.unknown_dataset_message("fashionmnist")
"unknown dataset 'fashionmnist'. Did you mean --dataset=fashion_mnist? Datasets: fashion_mnist, cifar10, cifar100, imagenet2012, synthetic, tfds:<name>, folder:<path>."
"""

import difflib
import os

DATASETS = ("fashion_mnist", "cifar10", "cifar100", "imagenet2012", "synthetic")
DATASET_NAMES = ", ".join(DATASETS) + ", tfds:<name>, folder:<path>"
AUGMENTATIONS = ("none", "standard", "mixup", "cutmix")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def unknown_dataset_message(name):
    """Why `name` is not a dataset name, with the closest known name."""
    close = difflib.get_close_matches(name.lower(), DATASETS, n=1, cutoff=0.6)
    hint = (f"Did you mean --dataset={close[0]}?" if close else
            f"For a TensorFlow Datasets name, write --dataset=tfds:{name}.")
    return f"unknown dataset '{name}'. {hint} Datasets: {DATASET_NAMES}."


def fashion_mnist_files():
    """The four IDX file names of Fashion-MNIST."""
    return [f for pair in FASHION_MNIST_FILES.values() for f in pair]


def has_idx_files(directory):
    """Whether `directory` holds the four IDX files."""
    return all(os.path.exists(os.path.join(directory, f)) for f in fashion_mnist_files())


def fashion_mnist_dir_problem(data_dir):
    """Why `data_dir` cannot serve Fashion-MNIST, or None: it must hold the
    four IDX files, or be a tfds data directory with a `fashion_mnist/` folder."""
    if has_idx_files(data_dir) or os.path.isdir(os.path.join(data_dir, "fashion_mnist")):
        return None
    missing = [f for f in fashion_mnist_files()
               if not os.path.exists(os.path.join(data_dir, f))]
    where = "does not exist" if not os.path.isdir(data_dir) else "lacks the IDX files"
    return (
        f"{where}: looked for {', '.join(missing)} in {os.path.abspath(data_dir)} "
        "(and for a tfds fashion_mnist/ folder). Put the four IDX files there, "
        "install the Debian package dataset-fashion-mnist and drop --data_dir "
        f"(it reads {FASHION_MNIST_DIR}), or drop --data_dir to download through "
        "TensorFlow Datasets."
    )
