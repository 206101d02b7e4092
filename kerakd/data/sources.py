"""Where examples come from: datasets by name, as `(uint8 image, int32 label)`.

`get_source(name)` reads only metadata; `source.prepare()` downloads (tfds)
and `source.examples(training)` gives the unshuffled, unaugmented examples
that `kerakd.data.pipeline` turns into batches.

Names:
    fashion_mnist: the IDX files of the Debian package `dataset-fashion-mnist`
        (`/usr/share/datasets/fashion-mnist`) or of `data_dir`, else tfds.
    cifar10, cifar100, imagenet2012, tfds:<name>: TensorFlow Datasets.
    folder:<path>: a directory of class sub-folders of images.
    synthetic: small generated data with a learnable signal (smoke tests).
"""

import dataclasses
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from kerakd.data.idx import read_idx
from kerakd.data.names import (  # noqa: F401  (names of this module before names.py)
    DATASET_NAMES,
    DATASETS,
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    fashion_mnist_dir_problem,
    fashion_mnist_files,
    has_idx_files,
    unknown_dataset_message,
)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Per-channel statistics of pixels in [0, 1]: RepDistiller's for CIFAR-100.
NORMALISATION = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet2012": (IMAGENET_MEAN, IMAGENET_STD),
    "synthetic": ((0.5,) * 3, (0.2,) * 3),
}
# Images this size or smaller get the CIFAR recipe (pad-4 crop + flip);
# larger ones the ImageNet recipe (random resized crop + flip).
SMALL_IMAGE_MAX = 64
VARIABLE_SIZE_DEFAULT = 224
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class DataError(ValueError):
    """A dataset that cannot be read as named: an unknown name, or files that
    are missing or corrupt. The message names the flag and the fix."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and a pipeline need to know about a dataset.

    Attributes:
        name: the dataset's name as given (`"cifar100"`, `"folder:/data/x"`).
        num_classes: number of classes.
        image_shape: `(H, W, C)` of the images a model reads (after resizing).
        mean, std: per-channel statistics of pixels scaled to [0, 1].
        style: `"small"` (pad-4 random crop + flip) or `"imagenet"` (random
            resized crop + flip; resize and centre crop for evaluation).
        num_train: training examples, None until known (`Source.prepare`).
        resize: True if stored images are not `image_shape` already.
    """

    name: str
    num_classes: int
    image_shape: tuple
    mean: tuple
    std: tuple
    style: str
    num_train: Optional[int] = None
    resize: bool = False


def _info(name, num_classes, stored_shape, image_size, **kwargs):
    """A `DatasetInfo` from the stored image shape (None for variable sizes)."""
    height, width, channels = stored_shape
    if image_size:
        size = (image_size, image_size)
    elif height is None or width is None:
        size = (VARIABLE_SIZE_DEFAULT, VARIABLE_SIZE_DEFAULT)
    else:
        size = (height, width)
    default_stats = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (
        (0.5,) * channels, (0.5,) * channels)
    mean, std = NORMALISATION.get(name, default_stats)
    return DatasetInfo(
        name=name,
        num_classes=int(num_classes),
        image_shape=(*size, channels),
        mean=tuple(mean),
        std=tuple(std),
        style="small" if max(size) <= SMALL_IMAGE_MAX else "imagenet",
        resize=size != (height, width),
        **kwargs,
    )


class Source:
    """A dataset's examples and their `DatasetInfo`."""

    def __init__(self, info):
        self.info = info

    def prepare(self):
        """Makes the examples available (downloads them if needed); returns self."""
        return self

    def examples(self, training, shuffle_files=False):
        """`(uint8 (H, W, C) image, int32 label)` examples in a fixed order.

        Args:
            training: the training split if True, else the validation split.
            shuffle_files: lets a file-based source read its files in a
                random order (faster mixing; the order then changes per epoch).
        """
        raise NotImplementedError


def _check_arrays(name, split, images, labels, num_classes):
    """Raises a ValueError naming what is wrong with a split's arrays."""
    where = f"Dataset '{name}', {split} split"
    if images.ndim != 4:
        raise ValueError(
            f"{where}: images of shape {images.shape}, but models read (N, H, W, C) "
            "batches. Add the channel axis (images[..., None] for grayscale)."
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"{where}: images are {images.dtype}; pass uint8 pixels 0-255 (the "
            "pipeline normalises them itself)."
        )
    if not len(images):
        raise ValueError(f"{where}: no examples.")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where}: labels of shape {labels.shape} and type {labels.dtype}; "
            f"expected {len(images)} integer class ids, one per image."
        )
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.size:
        raise ValueError(
            f"{where}: label {outside[0]} is outside the {num_classes} classes "
            f"(0 to {num_classes - 1}); {outside.size} labels are. Fix the labels or "
            "the number of classes."
        )


class ArraySource(Source):
    """In-memory NumPy images `(N, H, W, C)` uint8 and int labels `(N,)`."""

    def __init__(self, name, train, validation, num_classes, image_size=None):
        for split, (images, labels) in (("training", train), ("validation", validation)):
            _check_arrays(name, split, images, labels, num_classes)
        self._splits = {True: train, False: validation}
        images = train[0]
        super().__init__(_info(name, num_classes, images.shape[1:], image_size,
                               num_train=len(images)))

    def examples(self, training, shuffle_files=False):
        images, labels = self._splits[training]
        return tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))


def fashion_mnist(data_dir=None, image_size=None):
    """Fashion-MNIST from the IDX files of `data_dir`, else (no `data_dir`) of
    the Debian package's directory, else from tfds (which downloads it).

    Raises:
        DataError: `data_dir` holds neither the IDX files nor a tfds
            `fashion_mnist/` folder, or an IDX file is corrupt.
    """
    if data_dir:
        problem = fashion_mnist_dir_problem(data_dir)
        if problem:
            raise DataError(f"--data_dir={data_dir} {problem}")
    directory = data_dir or FASHION_MNIST_DIR
    if not has_idx_files(directory):
        hint = (
            f"Or put the IDX files {sorted(fashion_mnist_files())} "
            "in --data_dir, or install the Debian package dataset-fashion-mnist "
            f"(which puts them in {FASHION_MNIST_DIR})."
        )
        return TfdsSource("fashion_mnist", data_dir, image_size, hint=hint)

    def split(name):
        images, labels = (_read_fashion_mnist(directory, data_dir, f)
                          for f in FASHION_MNIST_FILES[name])
        return images[..., None], labels

    return ArraySource("fashion_mnist", split("train"), split("test"), 10, image_size)


def _read_fashion_mnist(directory, data_dir, name):
    """One IDX file of Fashion-MNIST; a corrupt one raises a DataError naming
    the file and where it came from (`--data_dir` or the Debian package)."""
    try:
        return read_idx(os.path.join(directory, name))
    except (ValueError, OSError) as error:
        fix = (f"Replace it in --data_dir={data_dir}" if data_dir else
               "Reinstall the Debian package dataset-fashion-mnist "
               "(apt-get install --reinstall dataset-fashion-mnist)")
        raise DataError(f"Fashion-MNIST: {error} {fix}, or pass --data_dir=DIR "
                        "with good copies of the four IDX files.") from error


def synthetic(image_size=None, num_classes=4, shape=(16, 16, 3), num_train=256,
              num_validation=64, seed=0):
    """Generated images: a fixed random pattern per class plus noise.

    A network learns the classes within a few steps, so a smoke test can
    check that fitting lowers the loss.
    """
    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(num_classes, *shape))

    def split(n):
        labels = rng.integers(0, num_classes, size=n)
        images = 128 + 40 * patterns[labels] + 25 * rng.normal(size=(n, *shape))
        return np.clip(images, 0, 255).astype(np.uint8), labels

    return ArraySource("synthetic", split(num_train), split(num_validation), num_classes,
                       image_size)


class TfdsSource(Source):
    """A supervised TensorFlow Datasets dataset (`as_supervised=True`).

    Args:
        name: the tfds name, e.g. `"cifar100"`.
        data_dir: tfds' data directory (default `~/tensorflow_datasets`).
        image_size: side of the images a model reads (default: stored size,
            224 for variable-size images).
        hint: appended to the error raised when the data cannot be prepared.
    """

    def __init__(self, name, data_dir=None, image_size=None, hint=""):
        import tensorflow_datasets as tfds

        try:
            self.builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as error:
            raise DataError(
                f"TensorFlow Datasets has no dataset '{name}' (--dataset). "
                f"Names: https://www.tensorflow.org/datasets/catalog. ({error})"
            ) from error
        self.hint = hint
        keys = self.builder.info.supervised_keys
        if not keys or len(keys) != 2:
            raise ValueError(
                f"tfds dataset '{name}' has no (image, label) supervised keys; "
                "kerakd trains classifiers on supervised image datasets."
            )
        image, label = (self.builder.info.features[k] for k in keys)
        if not hasattr(label, "num_classes"):
            raise ValueError(
                f"tfds dataset '{name}': the label feature '{keys[1]}' is not a "
                "ClassLabel; kerakd trains classifiers."
            )
        super().__init__(_info(name, label.num_classes, image.shape, image_size))
        self._validation_split = None

    def prepare(self):
        try:
            self.builder.download_and_prepare()
        except Exception as error:  # noqa: BLE001 - any failure means "not available"
            name, version = self.builder.name, self.builder.version
            root = os.path.dirname(os.path.dirname(self.builder.data_dir))
            raise RuntimeError(
                f"Could not download or prepare the tfds dataset '{name}': "
                f"{type(error).__name__}: {error}\n"
                f"Without internet access, build it where there is "
                f"(`tfds build {name} --data_dir=DIR`) and copy DIR here, then "
                f"pass --data_dir=DIR: it must hold {name}/{version}/ (this run "
                f"looked in {root}). For imagenet2012, put "
                "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
                f"DIR/downloads/manual/ instead. {self.hint}"
            ) from error
        splits = self.builder.info.splits
        self._validation_split = next(
            (s for s in ("validation", "test") if s in splits), None
        )
        if splits and self._validation_split is None:
            raise ValueError(
                f"tfds dataset '{self.builder.name}' has no 'validation' or "
                f"'test' split (it has {sorted(splits)})."
            )
        if "train" in splits:
            num_train = splits["train"].num_examples
        else:  # no split metadata (mocked data): count if the dataset knows
            num_train = int(self.examples(training=True).cardinality())
        self.info = dataclasses.replace(
            self.info, num_train=num_train if num_train >= 0 else None
        )
        return self

    def examples(self, training, shuffle_files=False):
        import tensorflow_datasets as tfds

        # Without split metadata (mocked data), use the catalog's names.
        split = "train" if training else (self._validation_split or (
            "validation" if self.builder.name == "imagenet2012" else "test"))
        dataset = self.builder.as_dataset(
            split=split,
            as_supervised=True,
            shuffle_files=shuffle_files and training,
            read_config=tfds.ReadConfig(add_tfds_id=False),
        )
        dataset = dataset.map(
            lambda image, label: (image, tf.cast(label, tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        # Decoded small images fit in memory; decoding them every epoch costs more.
        return dataset.cache() if self.info.style == "small" else dataset


class FolderSource(Source):
    """Images in class sub-folders: `path/<class>/*.jpg`.

    With `path/train/<class>/` and `path/val/<class>/` (or `validation/`,
    `test/`), those are the splits; otherwise every 10th image of each class
    (in name order) is held out for validation. Images are decoded as RGB.
    """

    VALIDATION_DIRS = ("val", "validation", "test")

    def __init__(self, path, image_size=None):
        if not os.path.isdir(path):
            raise ValueError(
                f"--dataset=folder:{path}: no such directory. It must hold one "
                "sub-folder of images per class (or train/ and val/ with those)."
            )
        train_root = os.path.join(path, "train")
        if os.path.isdir(train_root):
            val_root = next((os.path.join(path, d) for d in self.VALIDATION_DIRS
                             if os.path.isdir(os.path.join(path, d))), None)
            if val_root is None:
                raise ValueError(
                    f"{path} has train/ but no val/, validation/ or test/ folder "
                    "of the same classes."
                )
            self.classes = self._classes(train_root)
            train = self._files(train_root)
            validation = self._files(val_root)
        else:
            self.classes = self._classes(path)
            files = self._files(path)
            train = [f for f in files if f[2] % 10 != 9]
            validation = [f for f in files if f[2] % 10 == 9]
        if not train or not validation:
            raise ValueError(
                f"{path}: found {len(train)} training and {len(validation)} "
                f"validation images ({', '.join(IMAGE_EXTENSIONS)}); need both."
            )
        self._splits = {True: train, False: validation}
        super().__init__(_info(f"folder:{path}", len(self.classes), (None, None, 3),
                               image_size, num_train=len(train)))

    @staticmethod
    def _classes(root):
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if not classes:
            raise ValueError(f"{root} has no class sub-folders.")
        return classes

    def _files(self, root):
        """`[(file, class index, rank of the file in its class)]`, in name order."""
        found = []
        for label, name in enumerate(self.classes):
            directory = os.path.join(root, name)
            if not os.path.isdir(directory):
                raise ValueError(f"{root} lacks the class folder '{name}'.")
            files = sorted(f for f in os.listdir(directory)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            found += [(os.path.join(directory, f), label, i) for i, f in enumerate(files)]
        return found

    def examples(self, training, shuffle_files=False):
        files, labels, _ = zip(*self._splits[training])
        dataset = tf.data.Dataset.from_tensor_slices(
            (list(files), np.asarray(labels, np.int32))
        )

        def decode(path, label):
            image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                       expand_animations=False)
            return image, label

        return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def get_source(name, data_dir=None, image_size=None):
    """The `Source` of dataset `name`, reading only metadata.

    Args:
        name: fashion_mnist, cifar10, cifar100, imagenet2012, synthetic,
            `tfds:<name>` or `folder:<path>`.
        data_dir: Fashion-MNIST's IDX directory, or tfds' data directory.
        image_size: side of the (square) images a model reads; default: the
            stored size, 224 for datasets of variable-size images.

    Example:

    >>> from kerakd.data import get_source
    >>> source = get_source("fashion_mnist")   # `source.prepare()` reads the files
    >>> source.info.num_classes, source.info.image_shape
    (10, (28, 28, 1))
    """
    if name == "fashion_mnist":
        return fashion_mnist(data_dir, image_size)
    if name == "synthetic":
        return synthetic(image_size)
    if name in ("cifar10", "cifar100", "imagenet2012"):
        return TfdsSource(name, data_dir, image_size)
    if name.startswith("tfds:"):
        return TfdsSource(name[len("tfds:"):], data_dir, image_size)
    if name.startswith("folder:"):
        return FolderSource(name[len("folder:"):], image_size)
    raise DataError(f"--dataset={name}: {unknown_dataset_message(name)}")
