"""kerakd.export: a zoo student to SavedModel, TFLite float32 / int8 and ONNX,
reloaded and checked against the Keras model; the CLI's errors and a run end to end."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import app

import kerakd
import kerakd.train
from kerakd import export
from kerakd.data import augment

NUM_CLASSES = 10
SHAPE = (28, 28, 1)
MEAN, STD = (0.2860,), (0.3530,)
HAS_ONNX = export.onnx_available()
# ONNX only where the `onnx` extra is installed (pip install -e ".[onnx]").
FORMATS = export.FORMATS if HAS_ONNX else tuple(f for f in export.FORMATS if f != "onnx")


def _pixels(n, seed):
    """Separable uint8 images: a fixed pattern per class plus noise."""
    patterns = np.random.default_rng(0).normal(size=(NUM_CLASSES, *SHAPE))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=n)
    images = 128 + 40 * patterns[labels] + 25 * rng.normal(size=(n, *SHAPE))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int32)


def _normalised(pixels):
    info = kerakd.data.DatasetInfo("test", NUM_CLASSES, SHAPE, MEAN, STD, "small")
    return augment.normalize(pixels, info).numpy()


@pytest.fixture(scope="module")
def data():
    train_pixels, train_labels = _pixels(320, seed=1)
    test_pixels, test_labels = _pixels(200, seed=2)
    return {"train": (_normalised(train_pixels), train_labels),
            "test": (_normalised(test_pixels), test_labels), "test_pixels": test_pixels}


@pytest.fixture(scope="module")
def student(data):
    """resnet8 trained a few steps: accuracy on the fixed set means something."""
    keras.utils.set_random_seed(0)
    model = kerakd.models.get("resnet8", NUM_CLASSES, SHAPE)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*data["train"], batch_size=32, epochs=3, verbose=0)
    return kerakd.models.core_keras(model)


@pytest.fixture(scope="module")
def exported(student, data, tmp_path_factory):
    """Every format, in one export (one SavedModel trace)."""
    out = str(tmp_path_factory.mktemp("export"))
    images = data["train"][0]
    report = export.export_student(
        student, out, FORMATS, representative_data=[images[i:i + 64] for i in range(0, 320, 64)],
        test_data=data["test"], normalisation=(MEAN, STD))
    return out, report


def test_float_formats_agree_with_keras(student, data, exported):
    out, report = exported
    images, _ = data["test"]
    expected = student.predict(images, verbose=0)
    for name in FORMATS:
        if name == "tflite_int8":
            continue
        logits = export.RUNNERS[name](os.path.join(out, export.PATHS[name]), images)
        assert np.max(np.abs(logits - expected)) <= export.FLOAT_TOLERANCE, name
        result = report["formats"][name]
        assert result["ok"] and result["top1_agreement"] == 1.0, name
        assert result["max_abs_logit_diff"] <= export.FLOAT_TOLERANCE, name
    signature = tf.saved_model.load(os.path.join(out, "saved_model")).signatures
    assert "serving_default" in signature


def test_int8_keeps_accuracy_and_is_smaller(student, data, exported):
    out, report = exported
    images, labels = data["test"]
    keras_accuracy = np.mean(np.argmax(student.predict(images, verbose=0), -1) == labels)
    assert keras_accuracy > 0.5  # trained: the comparison means something
    path = os.path.join(out, "student_int8.tflite")
    interpreter = export._interpreter(path)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8  # integer only
    accuracy = np.mean(np.argmax(export.run_tflite(path, images), -1) == labels)
    assert abs(accuracy - keras_accuracy) <= 0.01
    assert report["formats"]["tflite_int8"]["top1_agreement"] >= 0.97
    assert os.path.getsize(os.path.join(out, "student.tflite")) >= 3 * os.path.getsize(path)
    result = report["formats"]["tflite_int8"]
    assert result["accuracy_delta"] == pytest.approx(accuracy - keras_accuracy)
    assert result["size_ratio_vs_float"] >= 3


def test_report_and_preprocessing_files(exported):
    out, report = exported
    with open(os.path.join(out, "export.json")) as file:
        assert json.load(file) == report
    assert report["ok"] and report["verification"] == {
        "examples": 200, "data": "test_data", "labels": True}
    assert set(report["formats"]) == set(FORMATS)
    with open(os.path.join(out, "preprocessing.json")) as file:
        preprocessing = json.load(file)
    assert preprocessing["input"] == "normalised" and not preprocessing["normalisation_baked_in"]
    assert preprocessing["mean"] == list(MEAN) and preprocessing["std"] == list(STD)
    assert preprocessing["input_shape"] == list(SHAPE)
    assert preprocessing["tflite_int8"]["input_dtype"] == "int8"


def test_raw_pixels_bakes_in_the_normalisation(student, data, tmp_path):
    formats = ("onnx",) if HAS_ONNX else ("saved_model",)
    (tmp_path / "student.tflite").write_bytes(b"an earlier export")
    report = export.export_student(student, str(tmp_path), formats, test_data=data["test"],
                                   normalisation=(MEAN, STD), raw_pixels=True)
    assert report["ok"] and report["input"] == "raw_pixels"
    pixels = data["test_pixels"][:16]
    logits = export.RUNNERS[formats[0]](str(tmp_path / export.PATHS[formats[0]]),
                                         pixels.astype(np.float32))
    expected = student.predict(_normalised(pixels), verbose=0)
    assert np.max(np.abs(logits - expected)) <= export.FLOAT_TOLERANCE
    with open(tmp_path / "preprocessing.json") as file:
        assert json.load(file)["normalisation_baked_in"] is True
    assert not (tmp_path / "student.tflite").exists()  # stale: it read normalised floats


def test_a_float_format_beyond_tolerance_fails(student, data, tmp_path):
    formats = ("onnx",) if HAS_ONNX else ("saved_model",)
    with pytest.raises(export.VerificationError, match="more than"):
        export.export_student(student, str(tmp_path), formats, test_data=data["test"],
                              tolerance=-1.0)
    with open(tmp_path / "export.json") as file:
        assert json.load(file)["ok"] is False


def test_bad_formats_and_missing_extra(monkeypatch):
    with pytest.raises(ValueError, match="unknown format 'tflite16'"):
        export.check_formats("tflite,tflite16")
    with pytest.raises(ValueError, match="tflite_int8 needs representative_data"):
        export.export_student(keras.Sequential(), "/nonexistent", ("tflite_int8",))
    monkeypatch.setattr(export, "missing_onnx_packages", lambda: ["tf2onnx"])
    with pytest.raises(ImportError, match=r'pip install -e "\.\[onnx\]"'):
        export.check_formats(("onnx",))
    assert export.check_formats(("tflite", "tflite")) == ("tflite",)


@pytest.mark.parametrize("args, message", [
    (["--formats=saved_model,tflite16"], "unknown format 'tflite16'"),
    (["--model_dir={missing}"], "does not exist"),
    (["--model_dir={empty}"], "has no student.keras"),
    (["--model_dir={empty}", "--best"], "has no best.keras"),
])
def test_cli_errors(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    args = [a.format(**paths) for a in args]
    if not any(a.startswith("--model_dir") for a in args):
        args.append(f"--model_dir={tmp_path / 'empty'}")
    with pytest.raises(app.UsageError, match=message) as error:
        export.run_with_args(args)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("run"))
    kerakd.train.run_with_args([
        "--method=none", "--dataset=synthetic", "--student=resnet8", "--epochs=1",
        "--steps_per_epoch=1", "--batch_size=8", "--lr_milestones=",
        f"--model_dir={directory}"])
    return directory


def test_cli_end_to_end(run_dir):
    report = export.run_with_args([f"--model_dir={run_dir}", f"--formats={','.join(FORMATS)}",
                                   "--calibration_batches=2", "--verification_examples=32"])
    out = os.path.join(run_dir, "export")
    for name in FORMATS:
        assert os.path.exists(os.path.join(out, export.PATHS[name])), name
    assert report["ok"] and report["dataset"] == "synthetic"
    assert report["verification"]["examples"] == 32
    with open(os.path.join(out, "export.json")) as file:
        assert json.load(file)["formats"]["tflite"]["top1_agreement"] == 1.0
    with open(os.path.join(out, "preprocessing.json")) as file:
        assert json.load(file)["mean"] == [0.5, 0.5, 0.5]  # synthetic's NORMALISATION


@pytest.mark.slow
def test_python_m_kerakd_export(run_dir, tmp_path):
    """`python -m kerakd.export`: best.keras, normalisation baked in, table printed;
    a bad flag exits non-zero with its message."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "kerakd.export", f"--model_dir={run_dir}", "--best",
               "--raw_pixels", "--formats=tflite", f"--output_dir={out}",
               "--verification_examples=16"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "student.tflite" in done.stdout and "verified on 16" in done.stdout
    with open(out / "preprocessing.json") as file:
        assert json.load(file)["input"] == "raw_pixels"
    done = subprocess.run(command[:4] + ["--formats=onnx2"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode != 0 and "unknown format 'onnx2'" in done.stderr


def test_the_console_script_and_extra_are_declared():
    import configparser

    setup = configparser.ConfigParser()
    setup.read(os.path.join(os.path.dirname(__file__), "..", "setup.cfg"))
    assert "kerakd-export = kerakd.export:run" in setup["options.entry_points"]["console_scripts"]
    extras = setup["options.extras_require"]
    pins = extras["onnx"].split()
    assert sorted(p.split("==")[0] for p in pins) == sorted(export.ONNX_PACKAGES)
    assert all("==" in p for p in pins) and set(pins) <= set(extras["test"].split())
