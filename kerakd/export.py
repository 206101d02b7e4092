"""`kerakd-export`: a trained student -> SavedModel, TFLite (float32, int8), ONNX.

    kerakd-export --model_dir=runs/kd --formats=saved_model,tflite,tflite_int8,onnx
    python -m kerakd.export --model_dir=runs/kd --best --raw_pixels   # the same tool

Reads the run's `student.keras` (`best.keras` with `--best`) and its
`run.flags` (dataset, data directory, image size, batch size), and writes to
`--output_dir` (default `<model_dir>/export/`) one file or folder per format:

    saved_model/          TensorFlow SavedModel, signature `serving_default`
    student.tflite        TFLite float32
    student_int8.tflite   TFLite, post-training full-integer quantization
                          (int8 weights, activations, input and output),
                          calibrated on `--calibration_batches` batches of the
                          run's training data (same pipeline and normalisation)
    student.onnx          ONNX (Keras's own export, through tf2onnx; needs the
                          extra: pip install -e ".[onnx]")
    preprocessing.json    what the exported models read: the normalisation,
                          the input shape, the int8 input/output quantization
    export.json           the verification figures below

Each artifact is loaded back and run on a batch of the validation set
(`--verification_examples`): export.json and the printed table give its top-1
agreement with the Keras student, its max logit difference (float formats)
and its accuracy against the Keras student's (int8). A float format that
differs by more than 1e-4 fails the export (exit status 1).

The student reads normalised floats, `(x / 255 - mean) / std` per channel.
With `--raw_pixels` that normalisation is baked in as a first layer: the
exported models then read float32 pixel values 0-255 (cast uint8 images).

From Python:

>>> from kerakd.export import export_student
>>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
>>> info = kerakd.data.get_source("synthetic").info   # its mean and std
>>> report = export_student(student, "out/", formats=("tflite",), normalisation=info)
>>> tflite = report["formats"]["tflite"]
>>> tflite["top1_agreement"], tflite["max_abs_logit_diff"] < 1e-4
(1.0, True)
"""

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging as absl_logging

import kerakd
from kerakd import compat

FORMATS = ("saved_model", "tflite", "tflite_int8", "onnx")
FLOAT_FORMATS = ("saved_model", "tflite", "onnx")
PATHS = {
    "saved_model": "saved_model",
    "tflite": "student.tflite",
    "tflite_int8": "student_int8.tflite",
    "onnx": "student.onnx",
}
EXPORT_JSON = "export.json"
PREPROCESSING_JSON = "preprocessing.json"
# The largest logit difference a float format may show against the Keras student.
FLOAT_TOLERANCE = 1e-4
ONNX_PACKAGES = ("onnx", "onnxruntime", "tf2onnx")
ONNX_EXTRA = 'pip install -e ".[onnx]"'
PROGRAM = "kerakd-export"


class VerificationError(RuntimeError):
    """An exported float format disagrees with the Keras student by more than
    the tolerance. `report` holds the figures (also in export.json)."""

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


def missing_onnx_packages():
    """The packages of the `onnx` extra that are not installed."""
    return [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]


def onnx_available():
    """True if ONNX export and its verification (onnxruntime) can run here."""
    return not missing_onnx_packages()


def check_formats(formats):
    """`formats` as a tuple of known names, in order, without repeats.

    Raises:
        ValueError: an unknown or empty format list.
        ImportError: `onnx` asked for without the `onnx` extra installed.
    """
    if isinstance(formats, str):
        formats = formats.split(",")
    names = tuple(dict.fromkeys(f.strip() for f in formats if f.strip()))
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        what = f"unknown format {', '.join(map(repr, unknown))}" if unknown else "no format"
        raise ValueError(f"--formats: {what}; use a comma-separated list of {', '.join(FORMATS)}.")
    missing = "onnx" in names and missing_onnx_packages()
    if missing:
        raise ImportError(
            f"--formats=onnx needs {', '.join(missing)} (not installed): install the "
            f"extra with `{ONNX_EXTRA}`, or leave onnx out of --formats.")
    return names


def _statistics(normalisation):
    """`(mean, std)` tuples from a `DatasetInfo` or a `(mean, std)` pair, or None."""
    if normalisation is None:
        return None
    if hasattr(normalisation, "mean") and hasattr(normalisation, "std"):
        mean, std = normalisation.mean, normalisation.std
    else:
        mean, std = normalisation
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _float32(model):
    """`model` with float32 layers: a mixed-precision student exports as float32."""
    if all(getattr(layer.dtype_policy, "name", "float32") == "float32"
           for layer in compat.all_layers(model)):
        return model

    def clone(layer):
        return type(layer).from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def servable(student, normalisation=None, raw_pixels=False):
    """The Keras model that is exported: the student with core Keras layers in
    float32, led (`raw_pixels`) by a layer that normalises pixels 0-255."""
    from kerakd.models import core_keras

    model = _float32(core_keras(student))
    return _with_pixels(model, normalisation) if raw_pixels else model


def _with_pixels(model, normalisation):
    """`model` led by a layer mapping pixels 0-255 to the normalised floats."""
    stats = _statistics(normalisation)
    if stats is None:
        raise ValueError("raw_pixels needs the normalisation (a DatasetInfo or (mean, std)).")
    mean, std = (np.asarray(v, np.float32) for v in stats)
    shape = tuple(model.inputs[0].shape[1:])
    if len(mean) != shape[-1]:
        raise ValueError(f"normalisation has {len(mean)} channels, the student reads {shape}.")
    pixels = keras.Input(shape, dtype="float32", name="pixels")
    # (x / 255 - mean) / std as x * scale + offset: constants in every format
    # (a Normalization layer's statistics become extra ONNX inputs).
    normalised = keras.layers.Rescaling(
        scale=[float(v) for v in 1.0 / (255.0 * std)],
        offset=[float(v) for v in -mean / std], name="normalise_pixels")(pixels)
    return keras.Model(pixels, model(normalised), name=f"{model.name}_raw_pixels")


def _to_pixels(images, stats):
    """Normalised images back to float pixel values 0-255."""
    mean, std = (np.asarray(v, np.float32) for v in stats)
    return (images * std + mean) * np.float32(255.0)


def _batches(data, limit=None):
    """Image batches (float32 arrays) from a dataset, an iterable of `x` or
    `(x, y)` batches, or a callable returning one."""
    if callable(data) and not isinstance(data, tf.data.Dataset):
        data = data()
    if isinstance(data, np.ndarray):
        data = [data]
    for number, batch in enumerate(data):
        if limit is not None and number >= limit:
            return
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        if isinstance(batch, dict):
            batch = batch["images"]
        yield np.asarray(batch, np.float32)


def _test_batch(test_data, representative_data, input_shape):
    """`(images, labels or None, where)` to verify the artifacts on."""
    if test_data is not None:
        if isinstance(test_data, tf.data.Dataset):
            test_data = next(iter(test_data))
        if isinstance(test_data, (tuple, list)):
            images, labels = test_data
            return (np.asarray(images, np.float32),
                    None if labels is None else np.asarray(labels).astype(np.int64), "test_data")
        return np.asarray(test_data, np.float32), None, "test_data"
    if representative_data is not None:
        return next(_batches(representative_data)), None, "first representative batch"
    images = np.random.default_rng(0).normal(size=(64, *input_shape)).astype(np.float32)
    return images, None, "random normal images"


def _size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, name))
                   for root, _, names in os.walk(path) for name in names)
    return os.path.getsize(path)


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


@contextlib.contextmanager
def _quiet():
    """Silences the converters' deprecation chatter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _interpreter(path, num_threads=None):
    """A TFLite interpreter: LiteRT's where installed, else tf.lite's;
    `num_threads` threads (default: the interpreter's own choice)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    with _quiet():
        return Interpreter(model_path=path, num_threads=num_threads)


def _quantization(details):
    scale, zero_point = details["quantization"]
    return float(scale), int(zero_point)


def run_tflite(path, images):
    """Logits of a .tflite model on `images` (normalised floats, or pixels for
    a `--raw_pixels` export); int8 inputs and outputs are (de)quantized."""
    interpreter = _interpreter(path)
    source, = interpreter.get_input_details()
    interpreter.resize_tensor_input(source["index"], list(images.shape))
    interpreter.allocate_tensors()
    source, = interpreter.get_input_details()
    target, = interpreter.get_output_details()
    feed = images
    if source["dtype"] in (np.int8, np.uint8):
        scale, zero_point = _quantization(source)
        info = np.iinfo(source["dtype"])
        feed = np.clip(np.round(images / scale) + zero_point, info.min, info.max)
    interpreter.set_tensor(source["index"], feed.astype(source["dtype"]))
    interpreter.invoke()
    logits = interpreter.get_tensor(target["index"])
    if target["dtype"] in (np.int8, np.uint8):
        scale, zero_point = _quantization(target)
        logits = (logits.astype(np.float32) - zero_point) * scale
    return logits.astype(np.float32)


def run_saved_model(path, images):
    """Logits of a SavedModel's `serving_default` signature on `images`."""
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["serving_default"]
    (name, spec), = signature.structured_input_signature[1].items()
    outputs = signature(**{name: tf.constant(images, spec.dtype)})
    (logits,) = outputs.values()
    return logits.numpy().astype(np.float32)


def run_onnx(path, images):
    """Logits of an ONNX model (onnxruntime, CPU) on `images`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    source, = session.get_inputs()
    return session.run(None, {source.name: images})[0].astype(np.float32)


RUNNERS = {"saved_model": run_saved_model, "tflite": run_tflite,
           "tflite_int8": run_tflite, "onnx": run_onnx}


def _write_saved_model(model, path):
    _remove(path)
    model.export(path, format="tf_saved_model", verbose=False)


def _write_tflite(saved_model, path, calibration=None):
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([batch] for batch in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with _quiet():
        content = converter.convert()
    with open(path, "wb") as file:
        file.write(content)


def _write_onnx(model, path):
    _remove(path)
    with _quiet():
        model.export(path, format="onnx", verbose=False)


def _preprocessing(model, stats, raw_pixels, style, int8_path):
    """The content of preprocessing.json."""
    shape = [int(d) for d in model.inputs[0].shape[1:]]
    mean, std = stats if stats else (None, None)
    if raw_pixels:
        feed = ("float32 pixel values 0-255 (cast uint8 images to float32); the "
                "model normalises them itself")
    elif stats:
        feed = "float32 (x / 255 - mean) / std per channel, x the uint8 pixel values"
    else:
        feed = "float32 images as the Keras student reads them (normalisation not given)"
    content = {
        "input": "raw_pixels" if raw_pixels else "normalised",
        "feed": feed,
        "normalisation_baked_in": bool(raw_pixels),
        "mean": list(mean) if mean else None,
        "std": list(std) if std else None,
        "input_shape": shape,
        "layout": "NHWC (batch, height, width, channels)",
        "output": f"logits over {int(model.outputs[0].shape[-1])} classes (softmax for "
                  "probabilities)",
    }
    if style == "imagenet":
        content["resize"] = (f"resize the shorter side to 256/224 of {shape[0]}, then "
                             f"centre-crop to {shape[0]}x{shape[1]}")
    if int8_path:
        interpreter = _interpreter(int8_path)
        (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
        (in_scale, in_zero), (out_scale, out_zero) = _quantization(source), _quantization(target)
        content["tflite_int8"] = {
            "input_dtype": "int8", "input_scale": in_scale, "input_zero_point": in_zero,
            "output_dtype": "int8", "output_scale": out_scale, "output_zero_point": out_zero,
            "quantize_input": "q = clip(round(v / input_scale) + input_zero_point, -128, "
                              "127), v the float32 input above",
            "dequantize_output": "logits = (q - output_zero_point) * output_scale",
        }
    return content


def _write_json(path, content):
    with open(path, "w") as file:
        json.dump(content, file, indent=2)
        file.write("\n")


def _accuracy(logits, labels):
    return None if labels is None else float(np.mean(np.argmax(logits, -1) == labels))


def load_model(path):
    """The Keras model saved at `path`, uncompiled, with kerakd's Keras classes
    registered first: a model saved straight from the zoo
    (`kerakd.models.get(...).save(...)`) holds kerakd's BatchNormalization,
    which a process that imported only `kerakd.export` would not know.

    Args:
        path: a `.keras` file.
    """
    kerakd.import_all()
    return keras.saving.load_model(path, compile=False)


def export_student(student, output_dir, formats=FORMATS, representative_data=None,
                   test_data=None, normalisation=None, raw_pixels=False,
                   calibration_batches=None, tolerance=FLOAT_TOLERANCE, style=None):
    """Exports `student` to each of `formats` in `output_dir`, and verifies each.

    Args:
        student: a Keras classifier (a zoo student; `kerakd.nn` layers are
            swapped for core Keras ones, mixed precision for float32).
        output_dir: the folder to write (created); the artifacts of an earlier
            export there, of any format, are removed first.
        formats: names among `FORMATS`, or a comma-separated string.
        representative_data: batches the student reads (normalised images), to
            calibrate `tflite_int8` (needed for it): a `tf.data.Dataset` or
            an iterable of `x` or `(x, y)` batches, or a callable returning one.
        test_data: `(images, labels)` (labels may be None), images a numpy
            array the student reads, or a dataset whose first batch is used.
            Default: the first representative batch, else random images.
        normalisation: a `DatasetInfo` or `(mean, std)` of pixels in [0, 1],
            written to preprocessing.json (and baked in with `raw_pixels`).
        raw_pixels: the exported models read pixel values 0-255 and normalise
            them with a first layer.
        calibration_batches: representative batches used (default: all).
        tolerance: the largest logit difference a float format may show.
        style: the dataset's `DatasetInfo.style` (`"imagenet"` adds the
            evaluation resize to preprocessing.json); default from
            `normalisation` where it is a `DatasetInfo`.

    Returns:
        The report written to `output_dir/export.json`: per format its path,
        size in bytes, top-1 agreement with the Keras student, max absolute
        logit difference, accuracy (with labels), and for int8 the accuracy
        delta against the Keras student.

    Raises:
        ValueError: an unknown format, or `tflite_int8` without
            `representative_data`.
        ImportError: `onnx` without the `onnx` extra.
        VerificationError: a float format differs from the Keras student by
            more than `tolerance` (export.json is written first, with
            `"ok": false`).
    """
    formats = check_formats(formats)
    if "tflite_int8" in formats and representative_data is None:
        raise ValueError("tflite_int8 needs representative_data (batches of training "
                         "images) to calibrate the quantization.")
    stats = _statistics(normalisation)
    style = style or getattr(normalisation, "style", None)
    reference = servable(student)
    model = _with_pixels(reference, normalisation) if raw_pixels else reference
    images, labels, where = _test_batch(test_data, representative_data,
                                        tuple(reference.inputs[0].shape[1:]))
    expected = np.asarray(reference(images, training=False), np.float32)
    feed = _to_pixels(images, stats) if raw_pixels else images
    model(feed[:1], training=False)  # Keras exports only a model that was called
    os.makedirs(output_dir, exist_ok=True)
    for stale in PATHS.values():  # an earlier export's files would contradict
        _remove(os.path.join(output_dir, stale))  # this one's preprocessing.json
    paths = {name: os.path.join(output_dir, PATHS[name]) for name in formats}

    with contextlib.ExitStack() as stack:
        if "saved_model" in formats:
            saved_model = paths["saved_model"]
            _write_saved_model(model, saved_model)
        elif {"tflite", "tflite_int8"} & set(formats):
            saved_model = os.path.join(stack.enter_context(tempfile.TemporaryDirectory()),
                                       "saved_model")
            _write_saved_model(model, saved_model)
        if "tflite" in formats:
            _write_tflite(saved_model, paths["tflite"])
        if "tflite_int8" in formats:
            calibration = [_to_pixels(b, stats) if raw_pixels else b
                           for b in _batches(representative_data, calibration_batches)]
            _write_tflite(saved_model, paths["tflite_int8"], calibration)
        if "onnx" in formats:
            _write_onnx(model, paths["onnx"])

    keras_accuracy = _accuracy(expected, labels)
    results, failures = {}, []
    for name in formats:
        logits = RUNNERS[name](paths[name], feed)
        difference = float(np.max(np.abs(logits - expected)))
        result = {
            "path": PATHS[name],
            "size_bytes": _size(paths[name]),
            "top1_agreement": float(np.mean(np.argmax(logits, -1) == np.argmax(expected, -1))),
            "max_abs_logit_diff": difference,
            "accuracy": _accuracy(logits, labels),
        }
        if name in FLOAT_FORMATS:
            result["ok"] = bool(difference <= tolerance)
            if not result["ok"]:
                failures.append(f"{name} (max logit difference {difference:.3g})")
        else:
            result["accuracy_delta"] = (None if labels is None
                                        else result["accuracy"] - keras_accuracy)
        results[name] = result
    if "tflite" in results and "tflite_int8" in results:
        results["tflite_int8"]["size_ratio_vs_float"] = (
            results["tflite"]["size_bytes"] / results["tflite_int8"]["size_bytes"])

    preprocessing = _preprocessing(model, stats, raw_pixels, style,
                                   paths.get("tflite_int8"))
    _write_json(os.path.join(output_dir, PREPROCESSING_JSON), preprocessing)
    report = {
        "ok": not failures,
        "tolerance": tolerance,
        "verification": {"examples": int(len(images)), "data": where,
                         "labels": labels is not None},
        "keras_accuracy": keras_accuracy,
        "parameters": int(reference.count_params()),
        "input": preprocessing["input"],
        "formats": results,
    }
    _write_json(os.path.join(output_dir, EXPORT_JSON), report)
    if failures:
        raise VerificationError(
            f"{', '.join(failures)} differs from the Keras student by more than "
            f"{tolerance:g} on {len(images)} {where} examples; the export is not "
            f"usable as it is (figures in {os.path.join(output_dir, EXPORT_JSON)}).", report)
    return report


def format_report(report):
    """The report as a small text table."""
    rows = [f"{'format':<12} {'file':<20} {'size':>10} {'top-1 agree':>11} "
            f"{'max |dlogit|':>12} {'acc delta':>9}"]
    for name, r in report["formats"].items():
        delta = r.get("accuracy_delta")
        rows.append(
            f"{name:<12} {r['path']:<20} {r['size_bytes'] / 1024:>8.1f}KB "
            f"{r['top1_agreement']:>11.4f} {r['max_abs_logit_diff']:>12.3g} "
            f"{'' if delta is None else f'{100 * delta:+.2f}pt':>9}")
    return "\n".join(rows)


# Command line -------------------------------------------------------------


def define_flags(flag_values):
    """Defines the command's flags on `flag_values`."""
    flags.DEFINE_string("model_dir", None, "the run's directory (it holds student.keras "
                        "and run.flags)", flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "where to write (default <model_dir>/export)",
                        flag_values=flag_values)
    flags.DEFINE_list("formats", list(FORMATS), f"formats to write, of {', '.join(FORMATS)}",
                      flag_values=flag_values)
    flags.DEFINE_bool("best", False, "export best.keras (the best validation epoch) "
                      "instead of student.keras", flag_values=flag_values)
    flags.DEFINE_bool("raw_pixels", False, "bake the normalisation in: the exported "
                      "models read pixel values 0-255", flag_values=flag_values)
    flags.DEFINE_integer("calibration_batches", 10, "training batches that calibrate "
                         "tflite_int8", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("verification_examples", 256, "validation examples each "
                         "artifact is checked on", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "overrides the run's --data_dir (data moved)",
                        flag_values=flag_values)


def _usage(message):
    return app.UsageError(f"{PROGRAM}: {message}")


def _run_flags(model_dir):
    """The run's flags, parsed from its `run.flags`."""
    from kerakd import flags as kerakd_flags
    from kerakd.run_directory import RUN_FLAGS

    path = os.path.join(model_dir, RUN_FLAGS)
    if not os.path.isfile(path):
        raise _usage(f"--model_dir={model_dir} has no {RUN_FLAGS}: it tells which data "
                     "calibrates and verifies the export; pass the directory of a "
                     "kerakd-train run.")
    try:
        return kerakd_flags.parse([PROGRAM, f"--flagfile={path}"])
    except flags.Error as error:
        raise _usage(f"{path}: {error}".replace("\n", " ")) from error


def export_run(flag_values):
    """Exports a run as the parsed flags say; returns the report.

    Raises:
        absl.app.UsageError: a bad flag, a missing run directory, a run
            without the student file or its run.flags (one-line messages).
        VerificationError: a float format disagrees with the Keras student.
    """
    from kerakd import data
    from kerakd.data import sources as data_sources

    fv = flag_values
    if not fv.model_dir:
        raise _usage("--model_dir is required: the directory of a kerakd-train run.")
    try:
        formats = check_formats(fv.formats)
    except (ValueError, ImportError) as error:
        raise _usage(str(error)) from error
    model_dir = fv.model_dir
    if not os.path.isdir(model_dir):
        raise _usage(f"--model_dir={model_dir} does not exist; pass the directory of a "
                     "kerakd-train run.")
    name = "best.keras" if fv.best else "student.keras"
    student_path = os.path.join(model_dir, name)
    if not os.path.isfile(student_path):
        hint = ("drop --best to export student.keras" if fv.best else
                "the run has not finished (kerakd-train writes it at the end); "
                "pass --best to export best.keras")
        raise _usage(f"--model_dir={model_dir} has no {name}: {hint}.")
    run = _run_flags(model_dir)
    data_dir = fv.data_dir or run.data_dir
    try:
        source = data.get_source(run.dataset, data_dir, run.image_size).prepare()
    except (data_sources.DataError, RuntimeError, ValueError) as error:
        raise _usage(str(error).replace("\n", " ")) from error
    info = source.info
    student = load_model(student_path)
    calibration = data.training_dataset(source, run.batch_size, augment="none",
                                        seed=run.seed).take(fv.calibration_batches)
    test = next(iter(data.validation_dataset(source, fv.verification_examples)))
    output_dir = fv.output_dir or os.path.join(model_dir, "export")
    report = export_student(
        student, output_dir, formats, representative_data=calibration,
        test_data=(test[0].numpy(), test[1].numpy()), normalisation=info,
        raw_pixels=fv.raw_pixels, calibration_batches=fv.calibration_batches)
    report["student"] = os.path.abspath(student_path)
    report["dataset"] = run.dataset
    report["verification"]["data"] = f"{run.dataset} validation set"
    _write_json(os.path.join(output_dir, EXPORT_JSON), report)
    return report


def run_with_args(args):
    """Exports as `kerakd-export ARGS` would, in this process; returns the report."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values([PROGRAM, *args])
    return export_run(flag_values)


def main(argv):
    if len(argv) > 1:
        raise _usage(f"unexpected arguments {argv[1:]}; every option is a --flag.")
    if not flags.FLAGS["verbosity"].present:  # the converters' INFO chatter
        absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        report = export_run(flags.FLAGS)
    except VerificationError as error:
        print(format_report(error.report), file=sys.stderr)
        raise SystemExit(f"{PROGRAM}: FAILED: {error}") from error
    output_dir = flags.FLAGS.output_dir or os.path.join(flags.FLAGS.model_dir, "export")
    print(format_report(report))
    print(f"{PROGRAM}: verified on {report['verification']['examples']} validation "
          f"examples (Keras student accuracy {report['keras_accuracy']:.4f}); wrote "
          f"{output_dir} ({PREPROCESSING_JSON} says what the models read, "
          f"{EXPORT_JSON} holds these figures).")


def run():
    """Entry point of the `kerakd-export` console script."""
    define_flags(flags.FLAGS)
    app.run(main)


if __name__ == "__main__":
    run()
