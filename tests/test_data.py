"""Data sources and pipelines (`kerakd.data`) on tiny generated or mocked data."""

import gzip
import re
import struct

import numpy as np
import pytest
import tensorflow as tf

from kerakd import data
from kerakd.data import sources
from kerakd.data.idx import read_idx


def write_idx(path, array):
    header = struct.pack(f">HBB{array.ndim}I", 0, 0x08, array.ndim, *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_dir(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 12)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return tmp_path


def batches(dataset):
    return [tuple(tf.nest.map_structure(lambda t: t.numpy(), b)) for b in dataset]


def test_read_idx_checks_its_header(tmp_path):
    write_idx(tmp_path / "ok.gz", np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(read_idx(tmp_path / "ok.gz"), np.arange(6).reshape(2, 3))
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_reads_idx_files_of_data_dir(fashion_dir):
    source = data.get_source("fashion_mnist", data_dir=str(fashion_dir)).prepare()
    info = source.info
    assert (info.num_classes, info.image_shape, info.num_train) == (10, (28, 28, 1), 30)
    assert (info.mean, info.std) == ((0.2860,), (0.3530,))
    images, labels = batches(data.validation_dataset(source, 5))[0]
    raw = read_idx(fashion_dir / "t10k-images-idx3-ubyte.gz")[:5, ..., None]
    np.testing.assert_allclose(images, (raw / 255 - 0.2860) / 0.3530, rtol=1e-5)
    assert labels.dtype == np.int32


def test_training_batches_drop_the_remainder_and_validation_keeps_all():
    source = sources.synthetic(num_train=50, num_validation=21)
    train = batches(data.training_dataset(source, batch_size=8, seed=0))
    assert [len(y) for _, y in train] == [8] * 6
    assert train[0][0].shape == (8, 16, 16, 3) and train[0][0].dtype == np.float32
    validation = batches(data.validation_dataset(source, batch_size=8))
    assert [len(y) for _, y in validation] == [8, 8, 5]


def test_index_only_when_asked_and_stable_per_example():
    source = sources.synthetic(num_train=24)
    plain = batches(data.training_dataset(source, 8, augment="none"))
    assert not isinstance(plain[0][0], dict)
    indexed = batches(data.training_dataset(source, 8, augment="none", with_index=True))
    images, labels, index = (np.concatenate(parts) for parts in zip(
        *[(x["images"], y, x["index"]) for x, y in indexed]))
    assert sorted(index) == list(range(24))
    stored_images, stored_labels = source._splits[True]
    np.testing.assert_array_equal(labels, stored_labels[index])
    expected = (stored_images[index] / 255 - 0.5) / 0.2
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixing_gives_soft_labels(kind):
    source = sources.synthetic()
    images, labels = batches(data.training_dataset(source, 16, augment=kind, seed=1))[0]
    assert images.shape == (16, 16, 16, 3)
    assert labels.shape == (16, 4) and labels.dtype == np.float32
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-5)
    assert (labels.max(axis=1) < 1).any()  # some examples are mixed


def write_images(directory, sizes):
    for i, (height, width) in enumerate(sizes):
        image = np.full((height, width, 3), 20 * i, np.uint8)
        tf.io.write_file(str(directory / f"{i:02d}.png"), tf.io.encode_png(image))


def test_folder_of_class_folders_holds_out_every_tenth(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        write_images(tmp_path / name, [(20, 30)] * 10)
    source = data.get_source(f"folder:{tmp_path}", image_size=24)
    info = source.info
    assert (info.num_classes, info.num_train, info.image_shape) == (2, 18, (24, 24, 3))
    assert info.style == "small"
    (images, labels), = batches(data.validation_dataset(source, 8))
    assert images.shape == (2, 24, 24, 3) and list(labels) == [0, 1]
    images, _ = batches(data.training_dataset(source, 6))[0]
    assert images.shape == (6, 24, 24, 3)


def test_large_images_get_the_imagenet_recipe(tmp_path):
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            write_images(tmp_path / split / name, [(90, 120), (130, 100)])
    source = data.get_source(f"folder:{tmp_path}", image_size=96)
    assert source.info.style == "imagenet" and source.info.mean == sources.IMAGENET_MEAN
    images, _ = batches(data.training_dataset(source, 4))[0]
    assert images.shape == (4, 96, 96, 3)
    images, labels = batches(data.validation_dataset(source, 4))[0]
    assert images.shape == (4, 96, 96, 3) and sorted(labels) == [0, 0, 1, 1]


def test_tfds_cifar100_mocked(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=20):
        source = data.get_source("cifar100", data_dir=str(tmp_path)).prepare()
        info = source.info
        assert (info.num_classes, info.image_shape, info.num_train) == (100, (32, 32, 3), 20)
        assert info.mean == (0.5071, 0.4867, 0.4408)
        images, labels = batches(data.training_dataset(source, 8))[0]
        assert images.shape == (8, 32, 32, 3) and labels.dtype == np.int32
        assert sum(len(y) for _, y in batches(data.validation_dataset(source, 8))) == 20


def test_tfds_without_internet_says_which_data_dir_it_expects(tmp_path, monkeypatch):
    source = data.get_source("cifar10", data_dir=str(tmp_path))

    def offline():
        raise ConnectionError("no network")

    monkeypatch.setattr(source.builder, "download_and_prepare", offline)
    with pytest.raises(RuntimeError, match=r"--data_dir=DIR: it must hold cifar10/3\."):
        source.prepare()


def test_unknown_dataset_lists_the_names():
    with pytest.raises(ValueError, match="tfds:<name>, folder:<path>"):
        data.get_source("mnist_but_wrong")
    with pytest.raises(sources.DataError, match="Did you mean --dataset=fashion_mnist"):
        data.get_source("fashionmnist")


# mtime=0: the same bytes in every process (test workers must collect the same ids).
@pytest.mark.parametrize("content, message", [
    (b"not gzip at all", "is not a readable gzip file"),
    (gzip.compress(b"\x00\x00\x08\x01" + b"\x00\x00\x00\x09" + bytes(9), mtime=0)[:-12],
     "is not a readable gzip file"),  # cut short
    (gzip.compress(b"\x00\x00", mtime=0), "holds 2 bytes, less than an IDX header"),
], ids=["not gzip", "cut short", "no header"])
def test_a_corrupt_idx_file_is_named(tmp_path, content, message):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{path} {message}")):
        read_idx(path)


def test_a_corrupt_fashion_mnist_file_names_it_and_the_fix(fashion_dir):
    bad = fashion_dir / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(sources.DataError, match=re.escape(str(bad)) + r".*Replace it in "
                       + re.escape(f"--data_dir={fashion_dir}")):
        data.get_source("fashion_mnist", data_dir=str(fashion_dir))


def test_a_fashion_mnist_data_dir_must_hold_its_files(tmp_path, fashion_dir):
    (fashion_dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(sources.DataError, match=r"lacks the IDX files: looked for "
                                                r"train-labels-idx1-ubyte\.gz in "):
        data.get_source("fashion_mnist", data_dir=str(fashion_dir))
    with pytest.raises(sources.DataError, match="does not exist: looked for train-images"):
        data.get_source("fashion_mnist", data_dir=str(tmp_path / "nowhere"))
    # A tfds data directory with fashion_mnist/ is one too.
    (tmp_path / "tfds" / "fashion_mnist").mkdir(parents=True)
    source = data.get_source("fashion_mnist", data_dir=str(tmp_path / "tfds"))
    assert isinstance(source, sources.TfdsSource)


def test_without_data_dir_fashion_mnist_falls_back_to_tfds(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", str(tmp_path))  # no Debian package
    assert isinstance(data.get_source("fashion_mnist"), sources.TfdsSource)


def test_one_pass_dataset_knows_its_number_of_batches():
    train, _, info = data.load("synthetic", batch_size=16, augment="none")
    assert int(train.cardinality()) == info.num_train // 16
    assert sum(1 for _ in train) == info.num_train // 16
