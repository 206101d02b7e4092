"""Size, CPU latency and test accuracy of the teacher and the distilled
students, exported to each deployment format.

    python benchmarks/deploy.py                        # teacher + seed 0 of every finished run
    python benchmarks/deploy.py --methods=none,kd --formats=tflite,tflite_int8
    python benchmarks/deploy.py --rounds=1000 --threads=1,2,4
    python benchmarks/deploy.py --from_results=benchmarks/results/deploy-<timestamp>.json

The models are the committed teacher (`--teacher`) and the students of the
accuracy benchmark (`benchmarks/accuracy.py`): every finished run (one with a
`results.json` and a `student.keras`) of seed `--seed` under
`--runs_dir/<pair>/<method>/`. The run folders are only read; unfinished runs
are listed as skipped. Each model goes through `kerakd.export.export_student`
(verified there against the Keras model; `tflite_int8` calibrated on
`--calibration_batches` training batches of the run's batch size and seed,
without augmentation, as `kerakd-export` does), into `--export_dir` (default:
a temporary folder, removed at the end). Then, in one process:

- **accuracy** of every artifact on the whole test set (Fashion-MNIST: 10,000
  images, read by `kerakd.data` as the accuracy benchmark reads them), with
  its top-1 agreement and largest logit difference against the Keras model;
- **latency**: one image (batch 1) in, float logits out, on the CPU:
  the TFLite interpreter and onnxruntime with each of `--threads` threads,
  the SavedModel's `serving_default` signature with TensorFlow's default
  thread pools (one thread per core); onnxruntime's idle threads sleep
  rather than spin (spinning ones steal the cores from the configuration
  timed next). Every configuration is timed once per
  round, in a new random order each round, for `--rounds` rounds after
  `--warmup` untimed ones, so that a change of the machine's load hits all of
  them alike; the median of the rounds is reported, with the interquartile
  range and the spread of the medians of `--blocks` consecutive blocks of
  rounds as its noise. The int8 figures include quantizing the input and
  dequantizing the logits (a few microseconds).

Outputs: the raw results as JSON in `--results_dir`
(`deploy-<timestamp>.json`), a plot of accuracy against latency (`--figure`)
and the tables in the "Deployment" section of `--output`, between its markers
(`--from_results` rewrites those two from an earlier JSON).
"""

import datetime
import glob
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from kerakd import data  # noqa: E402
from kerakd import export  # noqa: E402
from markdown_block import replace_block  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
COMMITTED_TEACHER = os.path.join(HERE, "teachers", "resnet20_fashion_mnist.keras")
SECTION = "Deployment"
BLOCK = re.compile(r"<!-- deploy -->.*?<!-- /deploy -->", re.S)
# Test images per inference call of the accuracy pass (bounds its memory).
ACCURACY_BATCH = 1000
# Examples the export verifies each artifact on (as kerakd-export's default).
VERIFICATION_EXAMPLES = 256
# Batch size and seed of the teacher's calibration batches (it has no run.flags).
TEACHER_BATCH_SIZE = 128
FORMAT_LABELS = {"saved_model": "SavedModel", "tflite": "TFLite float32",
                 "tflite_int8": "TFLite int8", "onnx": "ONNX"}
# Formats whose runtime takes a thread count; the SavedModel runs with TF's default.
THREADED = ("tflite", "tflite_int8", "onnx")
DEFAULT_THREADS = "default"

FLAGS = flags.FLAGS
flags.DEFINE_string("runs_dir", os.path.join("runs", "accuracy", "default"),
                    "The accuracy benchmark's runs: <runs_dir>/<pair>/<method>/seed<k>/.")
flags.DEFINE_integer("seed", 0, "The seed whose runs are benchmarked (one per method).",
                     lower_bound=0)
flags.DEFINE_list("methods", None, "Only the runs of these methods (default: every "
                  "finished one).")
flags.DEFINE_string("teacher", COMMITTED_TEACHER, "The teacher's .keras file ('' to "
                    "leave it out).")
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset of the models (synthetic: a "
                    "smoke test); runs of another dataset are skipped.")
flags.DEFINE_string("data_dir", None, "The dataset's directory (kerakd.data).")
flags.DEFINE_list("formats", None, "Formats, of saved_model, tflite, tflite_int8, onnx "
                  "(default: all; onnx only with the onnx extra installed).")
flags.DEFINE_list("threads", ["1", "2"], "Thread counts of the TFLite interpreter and "
                  "onnxruntime.")
flags.DEFINE_integer("rounds", 1000, "Timed rounds (one call of every configuration "
                     "each).", lower_bound=1)
flags.DEFINE_integer("warmup", 20, "Untimed rounds first.", lower_bound=0)
flags.DEFINE_integer("blocks", 5, "Consecutive blocks of rounds whose medians give "
                     "the spread of a median.", lower_bound=1)
flags.DEFINE_integer("calibration_batches", 10, "Training batches that calibrate "
                     "tflite_int8.", lower_bound=1)
flags.DEFINE_string("export_dir", None, "Where the artifacts go, one folder per model "
                    "(default: a temporary folder, removed at the end).")
flags.DEFINE_string("results_dir", "benchmarks/results", "Where the JSON goes.")
flags.DEFINE_string("figure", "docs/deploy_latency.png", "The plot of accuracy "
                    "against latency.")
flags.DEFINE_string("output", "docs/benchmarks.md", "Markdown file whose Deployment "
                    "section gets the tables.")
flags.DEFINE_string("from_results", None, "Measure nothing: write the plot and the "
                    "tables of this earlier results JSON.")


# -- models -------------------------------------------------------------------


def _run_flags(model_dir):
    """`{flag: value}` of a run's run.flags (`--name=value` lines)."""
    values = {}
    with open(os.path.join(model_dir, "run.flags")) as file:
        for line in file:
            name, sep, value = line.strip().partition("=")
            if sep and name.startswith("--"):
                values[name[2:]] = value
    return values


def find_models(runs_dir, seed, methods, teacher, dataset):
    """`(models, skipped)`: the teacher and the finished runs of `seed`, each a
    dict naming it and saying how to calibrate its int8 export; `skipped`
    lists the run folders left out and why."""
    models, skipped = [], []
    if teacher:
        record_path = os.path.splitext(teacher)[0] + ".json"
        record = {}
        if os.path.exists(record_path):
            with open(record_path) as file:
                record = json.load(file)
        architecture = record.get("architecture")
        models.append({
            "name": f"teacher {architecture or os.path.basename(teacher)}",
            "role": "teacher", "method": None, "file": teacher,
            "architecture": architecture,
            "reported_accuracy": record.get("final_accuracy"),
            "batch_size": TEACHER_BATCH_SIZE, "seed": 0})
    for model_dir in sorted(glob.glob(os.path.join(runs_dir, "*", "*", f"seed{seed}"))):
        pair, method = model_dir.split(os.sep)[-3:-1]
        if methods and method not in methods:
            continue
        missing = [f for f in ("results.json", "student.keras", "run.flags")
                   if not os.path.exists(os.path.join(model_dir, f))]
        if missing:
            skipped.append({"model_dir": model_dir, "why": f"not finished (no "
                            f"{', '.join(missing)})"})
            continue
        run = _run_flags(model_dir)
        if run.get("dataset", "fashion_mnist") != dataset:
            skipped.append({"model_dir": model_dir,
                            "why": f"dataset {run.get('dataset')}, not {dataset}"})
            continue
        with open(os.path.join(model_dir, "results.json")) as file:
            results = json.load(file)
        architecture = run.get("student", pair.split("-")[-1])
        models.append({
            "name": f"{architecture} {method}", "role": "student", "method": method,
            "pair": pair, "model_dir": model_dir,
            "file": os.path.join(model_dir, "student.keras"), "architecture": architecture,
            "reported_accuracy": results.get("final_accuracy"),
            "batch_size": int(run.get("batch_size", 128)), "seed": int(run.get("seed", 0))})
    # Teacher first, then by architecture, the plain student first in each.
    models.sort(key=lambda m: (m["role"] != "teacher", m["architecture"] or "",
                               m["method"] != "none", m["method"] or ""))
    return models, skipped


def test_set(source):
    """The whole test split as `(float32 normalised images, int64 labels)`."""
    images, labels = [], []
    for x, y in data.validation_dataset(source, ACCURACY_BATCH):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images).astype(np.float32), np.concatenate(labels).astype(np.int64)


def _chunks(images):
    for start in range(0, len(images), ACCURACY_BATCH):
        yield images[start:start + ACCURACY_BATCH]


# -- runtimes -----------------------------------------------------------------


class TFLiteModel:
    """A .tflite model's interpreter with `threads` threads: float images in,
    float logits out (int8 inputs quantized, outputs dequantized)."""

    def __init__(self, path, threads):
        self.interpreter = export._interpreter(path, num_threads=threads)
        self.shape = None

    def _fit(self, shape):
        source, = self.interpreter.get_input_details()
        self.interpreter.resize_tensor_input(source["index"], list(shape))
        self.interpreter.allocate_tensors()
        (self.source,), (self.target,) = (self.interpreter.get_input_details(),
                                          self.interpreter.get_output_details())
        self.input_quantization = (export._quantization(self.source)
                                   if self.source["dtype"] == np.int8 else None)
        self.output_quantization = (export._quantization(self.target)
                                    if self.target["dtype"] == np.int8 else None)
        self.shape = shape

    def __call__(self, images):
        if images.shape != self.shape:
            self._fit(images.shape)
        feed = images
        if self.input_quantization:
            scale, zero_point = self.input_quantization
            feed = np.clip(np.round(images / scale) + zero_point, -128, 127)
        self.interpreter.set_tensor(self.source["index"], feed.astype(self.source["dtype"]))
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self.target["index"])
        if self.output_quantization:
            scale, zero_point = self.output_quantization
            logits = (logits.astype(np.float32) - zero_point) * scale
        return logits


class SavedModel:
    """A SavedModel's `serving_default` signature (TensorFlow's thread pools)."""

    def __init__(self, path, threads=None):
        del threads  # TF's pools are set once per process
        self.loaded = tf.saved_model.load(path)  # the signature needs it alive
        self.signature = self.loaded.signatures["serving_default"]
        (self.input_name, spec), = self.signature.structured_input_signature[1].items()
        self.dtype = spec.dtype

    def __call__(self, images):
        outputs = self.signature(**{self.input_name: tf.constant(images, self.dtype)})
        (logits,) = outputs.values()
        return logits.numpy()


class ONNXModel:
    """An ONNX model in an onnxruntime CPU session with `threads` intra-op
    threads, whose idle workers sleep rather than spin."""

    def __init__(self, path, threads):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # A spinning worker keeps a core busy after its call: with a session per
        # model in one process, that slowed every other configuration timed next
        # (nine 2-thread sessions in turn: 5 ms a call instead of 0.6).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images):
        return self.session.run(None, {self.input_name: images})[0]


RUNTIMES = {"saved_model": SavedModel, "tflite": TFLiteModel, "tflite_int8": TFLiteModel,
            "onnx": ONNXModel}


def configurations(formats, threads):
    """`(format, threads)` pairs timed for each model: threaded formats with
    each count, the SavedModel with TF's default."""
    return [(f, t) for f in formats
            for t in (threads if f in THREADED else [DEFAULT_THREADS])]


def open_runtime(form, path, threads):
    return RUNTIMES[form](path, None if threads == DEFAULT_THREADS else int(threads))


# -- measuring ----------------------------------------------------------------


def full_test_accuracy(model, export_dir, report, formats, images, labels, threads):
    """Per format: accuracy on the whole test set, top-1 agreement with the Keras
    model and largest logit difference; and the Keras model's own accuracy."""
    reference = export.servable(model)
    expected = np.concatenate([np.asarray(reference(x, training=False))
                               for x in _chunks(images)])
    keras_accuracy = float(np.mean(np.argmax(expected, -1) == labels))
    results = {}
    for form in formats:
        runtime = open_runtime(form, os.path.join(export_dir, export.PATHS[form]),
                               threads if form in THREADED else DEFAULT_THREADS)
        logits = np.concatenate([runtime(x) for x in _chunks(images)]).astype(np.float32)
        results[form] = {
            "size_bytes": report["formats"][form]["size_bytes"],
            "export_ok": report["formats"][form].get("ok", True),
            "accuracy": float(np.mean(np.argmax(logits, -1) == labels)),
            "top1_agreement": float(np.mean(np.argmax(logits, -1)
                                            == np.argmax(expected, -1))),
            "max_abs_logit_diff": float(np.max(np.abs(logits - expected))),
        }
        results[form]["accuracy_delta"] = results[form]["accuracy"] - keras_accuracy
    return keras_accuracy, results


def export_and_score(entry, source, images, labels, formats, export_root, threads):
    """Exports one model to `formats` and scores every artifact on the test set."""
    model = export.load_model(entry["file"])
    calibration = data.training_dataset(
        source, entry["batch_size"], augment="none", seed=entry["seed"]
    ).take(FLAGS.calibration_batches)
    folder = os.path.join(export_root, re.sub(r"\W+", "_", entry["name"]))
    try:
        report = export.export_student(
            model, folder, formats, representative_data=calibration,
            test_data=(images[:VERIFICATION_EXAMPLES], labels[:VERIFICATION_EXAMPLES]),
            normalisation=source.info, calibration_batches=FLAGS.calibration_batches)
    except export.VerificationError as error:  # reported, not fatal: the row shows it
        print(f"deploy: {entry['name']}: {error}", flush=True)
        report = error.report
    keras_accuracy, results = full_test_accuracy(
        model, folder, report, formats, images, labels, threads)
    keras.backend.clear_session()
    return {**entry, "parameters": report["parameters"], "export_dir": folder,
            "keras_accuracy": keras_accuracy, "formats": results}


def interleaved_latencies(runtimes, image, rounds, warmup, blocks, seed=0):
    """Latency of each `{key: runtime}` on `image`, and the machine's 1-minute
    load average sampled along.

    Each round gives every runtime one turn, in a new random order: two calls
    back to back, both timed. The first (*cold*) follows other models' calls,
    which have evicted this one's weights and let its threads sleep; the
    second (*warm*) follows its own, as in a steady stream of requests.

    Returns:
        `({key: warm statistics, with the cold ones under "cold"}, loads)`;
        see `latency_statistics`.
    """
    keys = list(runtimes)
    rng = np.random.default_rng(seed)
    for _ in range(warmup):
        for key in keys:
            runtimes[key](image)
    times = np.empty((2, rounds, len(keys)))  # (cold / warm, round, runtime)
    loads = [os.getloadavg()[0]]
    for number in range(rounds):
        for column in rng.permutation(len(keys)):
            runtime = runtimes[keys[column]]
            for call in range(2):
                start = time.perf_counter()
                runtime(image)
                times[call, number, column] = time.perf_counter() - start
        if (number + 1) % max(1, rounds // 10) == 0:
            loads.append(os.getloadavg()[0])
    return {key: {**latency_statistics(times[1, :, column], blocks),
                  "cold": latency_statistics(times[0, :, column], blocks)}
            for column, key in enumerate(keys)}, loads


def latency_statistics(seconds, blocks):
    """Median, quartiles and the medians of consecutive blocks, in ms."""
    ms = 1000 * np.asarray(seconds)
    block_medians = [float(np.median(b)) for b in np.array_split(ms, min(blocks, len(ms)))]
    q25, median, q75 = (float(v) for v in np.percentile(ms, [25, 50, 75]))
    return {"median_ms": median, "q25_ms": q25, "q75_ms": q75,
            "iqr_relative": (q75 - q25) / median,
            "block_medians_ms": block_medians,
            "block_spread_relative": (max(block_medians) - min(block_medians)) / median,
            "min_ms": float(ms.min()), "rounds": int(len(ms))}


def noise_summary(models, configs):
    """How far the latencies can be trusted, per thread count (`"default"`:
    the SavedModel): over its configurations, the median interquartile range
    and the median and largest spread of the block medians, relative to the
    median; and, among models of one architecture (the same graph, other
    weights, so the same work), the median and largest relative difference
    of their medians in one configuration."""
    summary = {}
    for threads in dict.fromkeys(t for _, t in configs):
        keys = [f"{f}@{t}" for f, t in configs if t == threads]
        stats = [m["latency"][k] for m in models for k in keys if k in m["latency"]]
        same = []
        for key in keys:
            by_architecture = {}
            for m in models:
                if key in m["latency"]:
                    by_architecture.setdefault(m["architecture"], []).append(
                        m["latency"][key]["median_ms"])
            same += [(max(v) - min(v)) / float(np.median(v))
                     for v in by_architecture.values() if len(v) > 1]
        summary[threads] = {
            "configurations": len(stats),
            "median_iqr_relative": float(np.median([s["iqr_relative"] for s in stats])),
            "median_block_spread_relative": float(np.median(
                [s["block_spread_relative"] for s in stats])),
            "max_block_spread_relative": float(max(s["block_spread_relative"]
                                                   for s in stats)),
            "same_architecture_median_relative": float(np.median(same)) if same else None,
            "same_architecture_max_relative": float(max(same)) if same else None,
        }
    return summary


def noise_table(run):
    def pct(value):
        return "-" if value is None else f"{100 * value:.0f} %"

    rows = [[("SavedModel (TF's pools)" if t == DEFAULT_THREADS
              else f"{t} thread{'s' if t != '1' else ''}"), n["configurations"],
             pct(n["median_iqr_relative"]),
             f"{pct(n['median_block_spread_relative'])} ({pct(n['max_block_spread_relative'])})",
             f"{pct(n['same_architecture_median_relative'])} "
             f"({pct(n['same_architecture_max_relative'])})"]
             for t, n in run["noise"].items()]
    return _table(["latency of", "configurations", "IQR / median",
                   f"spread of {run['settings']['blocks']} block medians / median: "
                   "median (max)",
                   "spread among same-graph models: median (max)"], rows)


# -- reporting ----------------------------------------------------------------


def _ms(stats):
    return f"{stats['median_ms']:.2f} ({stats['q75_ms'] - stats['q25_ms']:.2f})"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def latency_column(threads, form, thread_counts):
    """The table column a configuration's latency goes in: its thread count;
    the SavedModel (TF's default pools, one thread per core) in the column of
    the machine's core count when there is one, else the last."""
    if threads != DEFAULT_THREADS:
        return threads
    cores = str(os.cpu_count())
    return cores if cores in thread_counts else thread_counts[-1]


def _threads(count):
    return f"{count} thread{'s' if count != '1' else ''}"


def main_table(run):
    """One row per model and format: size, accuracy, warm latency (with its
    IQR) and cold latency per thread count."""
    thread_counts = run["settings"]["threads"]
    header = (["model", "parameters", "format", "size (KB)", "test accuracy (%)",
               "vs Keras (points)"]
              + [f"warm ms, {_threads(t)}" for t in thread_counts]
              + [f"cold ms, {_threads(t)}" for t in thread_counts])
    rows = []
    for m in run["models"]:
        for number, (form, r) in enumerate(m["formats"].items()):
            warm, cold = ({t: "-" for t in thread_counts} for _ in range(2))
            for key, stats in m["latency"].items():
                f, threads = key.split("@")
                if f == form:
                    column = latency_column(threads, f, thread_counts)
                    warm[column] = _ms(stats)
                    cold[column] = f"{stats['cold']['median_ms']:.2f}"
            rows.append([f"**{m['name']}**" if number == 0 else "",
                         f"{m['parameters']:,}" if number == 0 else "",
                         FORMAT_LABELS[form], f"{r['size_bytes'] / 1024:,.0f}",
                         f"{100 * r['accuracy']:.2f}", f"{100 * r['accuracy_delta']:+.2f}",
                         *[warm[t] for t in thread_counts],
                         *[cold[t] for t in thread_counts]])
    return _table(header, rows)


def _ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}"


def _median(model, form, threads, kind="warm"):
    stats = model["latency"].get(f"{form}@{threads}")
    if stats is not None and kind == "cold":
        stats = stats["cold"]
    return None if stats is None else stats["median_ms"]


def ratio_table(run):
    """Per model: latency against the teacher's, int8 against float TFLite
    (latency, size, accuracy), the speed-up of more threads, and the cold
    call against the warm one (warm latencies unless said)."""
    threads = run["settings"]["threads"]
    one, most = threads[0], threads[-1]
    teacher = next((m for m in run["models"] if m["role"] == "teacher"), None)
    header = ["model", f"latency / teacher's (TFLite float, {one} thread)",
              f"int8 / float latency (TFLite, {one} thread)", "float / int8 size",
              "int8 - float accuracy (points)",
              f"speed-up of {most} threads ({one}-thread / {most}-thread latency, "
              "TFLite float)", f"cold / warm (TFLite float, {one} thread)"]
    rows = []
    for m in run["models"]:
        f, q = m["formats"].get("tflite"), m["formats"].get("tflite_int8")
        rows.append([
            m["name"],
            "-" if teacher is None or m is teacher else _ratio(
                _median(m, "tflite", one), _median(teacher, "tflite", one)),
            _ratio(_median(m, "tflite_int8", one), _median(m, "tflite", one)),
            _ratio(f and f["size_bytes"], q and q["size_bytes"]),
            "-" if not (f and q) else f"{100 * (q['accuracy'] - f['accuracy']):+.2f}",
            _ratio(_median(m, "tflite", one), _median(m, "tflite", most)),
            _ratio(_median(m, "tflite", one, "cold"), _median(m, "tflite", one)),
        ])
    return _table(header, rows)


def markdown_block(run, figure):
    m = run["machine"]
    lines = [
        "<!-- deploy -->",
        f"Command: `{run['command']}` ({run['date']}; {m['cpu_cores']} CPU cores, "
        f"{m['processor']}, no GPU used; TensorFlow {m['tensorflow']}, TFLite through "
        f"{m['tflite_interpreter']}, onnxruntime {m['onnxruntime'] or 'not installed'}; "
        f"priority nice {m['nice']}). Load average (1 min) {m['load_average_1m']:.1f} at "
        f"the start, {m['load_average_1m_end']:.1f} at the end, "
        f"{min(run['loads_during_timing']):.1f}-{max(run['loads_during_timing']):.1f} "
        f"while timing. Raw results: `{run['results_file']}`.",
        "",
        f"Accuracy on the {run['test_examples']:,} test images; *vs Keras* is the "
        "artifact's accuracy minus the Keras model's on the same images. Latency of "
        "one image, in ms: each of "
        f"{run['settings']['rounds']} rounds (after {run['settings']['warmup']} "
        "warm-up rounds) gives every configuration a turn of two calls back to back, "
        "in a random order; *cold* is the first call (after other models ran), "
        "*warm* the second (right after its own); medians, the warm one with its "
        "interquartile range in brackets. The SavedModel runs on TensorFlow's "
        "default thread pools (one thread per core) and is listed under that many "
        "threads. Size: the file (the SavedModel's folder).",
        "",
        *main_table(run),
        "",
        "Ratios (from the same run):",
        "",
        *ratio_table(run),
        "",
        "Noise of the warm latencies (relative to each median; IQR and block spreads are "
        "medians over the configurations; same-graph models are the students of one "
        "architecture, whose medians should agree):",
        "",
        *noise_table(run),
        *([""] + [f"- skipped `{s['model_dir']}`: {s['why']}" for s in run["skipped"]]
          if run["skipped"] else []),
        "",
        f"![test accuracy against single-image latency]({figure})",
        "<!-- /deploy -->",
    ]
    return "\n".join(lines)


def update_markdown(path, block):
    """Replaces the Deployment block of `path` (text around it stays), or
    appends the section with it (creating the file)."""
    replace_block(path, BLOCK, SECTION, block)


def plot(run, path):
    """Test accuracy against single-image latency with the first of --threads
    (the SavedModel on TF's default pools), one point per model and format;
    the bars are the latency's interquartile range."""
    column = run["settings"]["threads"][0]
    markers = {"saved_model": "s", "tflite": "o", "tflite_int8": "^", "onnx": "D"}
    colours = plt.get_cmap("tab10")
    figure, axis = plt.subplots(figsize=(10, 5.5))
    for number, m in enumerate(run["models"]):
        for form, r in m["formats"].items():
            key = f"{form}@{DEFAULT_THREADS if form not in THREADED else column}"
            stats = m["latency"].get(key)
            if stats is None:
                continue
            median = stats["median_ms"]
            axis.errorbar(median, 100 * r["accuracy"],
                          xerr=[[median - stats["q25_ms"]], [stats["q75_ms"] - median]],
                          marker=markers[form], color=colours(number % 10), markersize=7,
                          linestyle="none", capsize=2, alpha=0.85)
    axis.set_xscale("log")
    low, high = axis.get_xlim()
    axis.set_xticks([t for t in (0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5, 10, 20, 30, 50, 100)
                     if low <= t <= high])
    axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel(f"single-image latency, ms (median, log scale)\nTFLite and ONNX with "
                    f"{column} thread{'s' if column != '1' else ''}, SavedModel on TF's "
                    "default pools")
    axis.set_ylabel(f"test accuracy (%), {run['test_examples']:,} images")
    model_handles = [plt.Line2D([], [], color=colours(i % 10), marker="o", linestyle="none",
                                label=m["name"]) for i, m in enumerate(run["models"])]
    format_handles = [plt.Line2D([], [], color="grey", marker=markers[f], linestyle="none",
                                 label=FORMAT_LABELS[f]) for f in run["settings"]["formats"]]
    first = axis.legend(handles=model_handles, fontsize="small", title="model",
                        loc="upper left", bbox_to_anchor=(1.01, 1))
    axis.add_artist(first)
    axis.legend(handles=format_handles, fontsize="small", title="format",
                loc="lower left", bbox_to_anchor=(1.01, 0))
    axis.grid(True, which="both", alpha=0.3)
    axis.set_title(f"{run['dataset']}: exported models on {run['machine']['cpu_cores']} "
                   "CPU cores, batch 1")
    figure.tight_layout(rect=(0, 0, 0.8, 1))  # room on the right for the legends
    figure.savefig(path, dpi=100)
    plt.close(figure)


def machine():
    try:
        import onnxruntime
        onnxruntime_version = onnxruntime.__version__
    except ImportError:
        onnxruntime_version = None
    interpreter = ("ai_edge_litert" if importlib.util.find_spec("ai_edge_litert")
                   else "tf.lite.Interpreter")  # as kerakd.export picks it
    return {"platform": platform.platform(), "cpu_cores": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "onnxruntime": onnxruntime_version, "tflite_interpreter": interpreter,
            "python": platform.python_version(), "nice": os.nice(0),
            "load_average_1m": os.getloadavg()[0]}


def chosen_formats():
    """`--formats`, or every format (onnx only where its extra is installed)."""
    if FLAGS.formats:
        try:
            return list(export.check_formats(FLAGS.formats))
        except (ValueError, ImportError) as error:
            raise app.UsageError(str(error)) from error
    return [f for f in export.FORMATS if f != "onnx" or export.onnx_available()]


def write_report(run):
    """The plot and the Deployment block of a finished run."""
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.figure)), exist_ok=True)
    plot(run, FLAGS.figure)
    figure = os.path.relpath(os.path.abspath(FLAGS.figure),
                             os.path.dirname(os.path.abspath(FLAGS.output)))
    block = markdown_block(run, figure)
    update_markdown(FLAGS.output, block)
    print(block)


def main(argv):
    del argv
    if FLAGS.from_results:
        with open(FLAGS.from_results) as file:
            run = json.load(file)
        run["noise"] = noise_summary(run["models"], configurations(
            run["settings"]["formats"], run["settings"]["threads"]))
        write_report(run)
        print(f"Wrote {FLAGS.figure} and {FLAGS.output} from {FLAGS.from_results}.")
        return
    tf.get_logger().setLevel("ERROR")
    absl_logging.set_verbosity(absl_logging.WARNING)  # the converters' INFO chatter
    formats = chosen_formats()
    threads = [str(int(t)) for t in FLAGS.threads]
    run = {"command": shlex.join(["python", "benchmarks/deploy.py", *sys.argv[1:]]),
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": machine(), "dataset": FLAGS.dataset,
           "settings": {"formats": formats, "threads": threads, "rounds": FLAGS.rounds,
                        "warmup": FLAGS.warmup, "blocks": FLAGS.blocks,
                        "calibration_batches": FLAGS.calibration_batches,
                        "seed": FLAGS.seed, "runs_dir": FLAGS.runs_dir}}
    models, run["skipped"] = find_models(FLAGS.runs_dir, FLAGS.seed, FLAGS.methods,
                                         FLAGS.teacher, FLAGS.dataset)
    if not models:
        raise app.UsageError(f"no model: no teacher and no finished run of seed "
                             f"{FLAGS.seed} under --runs_dir={FLAGS.runs_dir}.")
    source = data.get_source(FLAGS.dataset, FLAGS.data_dir).prepare()
    images, labels = test_set(source)
    run["test_examples"] = int(len(images))
    export_root = FLAGS.export_dir or tempfile.mkdtemp(prefix="kerakd-deploy-")
    configs = configurations(formats, threads)
    try:
        scored = []
        for entry in models:
            print(f"deploy: exporting and scoring {entry['name']} ({entry['file']})",
                  flush=True)
            scored.append(export_and_score(entry, source, images, labels, formats,
                                           export_root, threads[-1]))
        runtimes = {(number, f"{f}@{t}"): open_runtime(
                        f, os.path.join(m["export_dir"], export.PATHS[f]), t)
                    for number, m in enumerate(scored) for f, t in configs}
        print(f"deploy: timing {len(runtimes)} configurations, {FLAGS.rounds} rounds",
              flush=True)
        latencies, run["loads_during_timing"] = interleaved_latencies(
            runtimes, images[:1], FLAGS.rounds, FLAGS.warmup, FLAGS.blocks)
        for (number, key), stats in latencies.items():
            scored[number].setdefault("latency", {})[key] = stats
    finally:
        if not FLAGS.export_dir:
            shutil.rmtree(export_root, ignore_errors=True)
    for m in scored:
        if not FLAGS.export_dir:
            m.pop("export_dir")
    run["models"] = scored
    run["machine"]["load_average_1m_end"] = os.getloadavg()[0]
    run["noise"] = noise_summary(scored, configs)
    os.makedirs(FLAGS.results_dir, exist_ok=True)
    stamp = run["date"].replace(":", "")
    run["results_file"] = os.path.join(FLAGS.results_dir, f"deploy-{stamp}.json")
    with open(run["results_file"], "w") as file:
        json.dump(run, file, indent=1)
    write_report(run)
    print(f"Wrote {run['results_file']}, {FLAGS.figure} and {FLAGS.output}.")


if __name__ == "__main__":
    app.run(main)
