"""Step throughput of kerakd's distillation methods, against their parts,
against `keras.distillation`, and of kerakd's student step against PyTorch's.

    python benchmarks/throughput.py                 # anchor, both pairs, all methods
    python benchmarks/throughput.py --pairs=fmnist --methods=kd,fitnet,at
    python benchmarks/throughput.py --pairs= --steps=20   # the PyTorch anchor alone

The PyTorch anchor (`--anchor_models`, default resnet8x4, wrn_16_2,
resnet18_cifar; empty to skip it): the student training step (cross-entropy,
SGD with momentum 0.9, batch 64 of 32x32x3 images, 100 classes) of each zoo
model as kerakd's `Distiller(student, "none")` and as its PyTorch reference
architecture (`kerakd/torch_reference.py`), timed in turns in this process,
and the ratio kerakd / PyTorch. Without torch installed, the PyTorch columns
say so and the rest runs.

For each teacher -> student pair (`PAIRS`), in one process and on one fixed
batch, it times the median of `--steps` steps (after `--warmup` steps) of the
configurations below, interleaved (each round runs one step of each) so that
a change in the machine's load affects them alike:

- the teacher's inference alone (a compiled `tf.function`, `training=False`);
- the student's plain training step: `keras.Model.train_on_batch` with a
  cross-entropy loss, and kerakd's `Distiller(student, "none")`;
- each method's `Distiller.train_on_batch`;
- `keras.distillation.Distiller` on the same models for KD
  (`LogitsDistillation`) and for FitNet's mid-level MSE feature pair
  (`FeatureDistillation`), when `kd` / `fitnet` are benchmarked.

It also reports each method's extra trainable parameters (`distiller.method`),
its extra train-step FLOPs, the memory each configuration takes, and the
share of step time spent waiting for input when the step is fed by kerakd's
training pipeline. Raw results go to `--results_dir` as JSON; the tables
replace this pair's block (or are appended) in the "Throughput" section of
`--output`.
"""

import dataclasses
import datetime
import gc
import json
import os
import platform
import re
import shlex
import sys
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import kerakd  # noqa: E402
from kerakd import flags as kerakd_flags  # noqa: E402
from kerakd import methods  # noqa: E402
from kerakd.data import pipeline  # noqa: E402
from kerakd.data import sources  # noqa: E402
from kerakd.taps import resolve_taps  # noqa: E402
from kerakd.devices import precision_policy  # noqa: E402
from markdown_block import replace_block  # noqa: E402
# The FLOP statistics of TensorFlow's ops (`tf.compat.v1.profiler`'s source).
from tensorflow.python.framework import ops as tf_ops  # noqa: E402
from tensorflow.python.profiler.internal import flops_registry  # noqa: E402,F401


@dataclasses.dataclass(frozen=True)
class Pair:
    """A teacher -> student pair and the batches it is timed on."""

    teacher: str
    student: str
    image_shape: tuple
    num_classes: int
    batch_size: int
    dataset: str


PAIRS = {
    "cifar": Pair("resnet32x4", "resnet8x4", (32, 32, 3), 100, 64, "cifar100"),
    "fmnist": Pair("resnet20", "resnet8", (28, 28, 1), 10, 128, "fashion_mnist"),
}
# Rows of the random in-memory source the input pipeline reads (its work per
# batch does not depend on how many rows it has).
PIPELINE_EXAMPLES = 4096
# `num_data` of methods with a memory bank (CIFAR's training-set size).
BANK_ROWS = 50_000
# The method whose step the input pipeline feeds, when it is benchmarked.
INPUT_WAIT_METHOD = "kd"
# keras.distillation counterparts of kerakd methods.
KERAS_COUNTERPARTS = {"kd": "LogitsDistillation", "fitnet": "FeatureDistillation"}
# FitNet's default hint: the second "stages" tap of both networks.
FEATURE_STAGE = methods.get("fitnet").stage
# Targets reported against (not asserted): the methods whose overhead
# (distill / (teacher inference + student step)) is targeted and its limit,
# kerakd / keras.distillation per method, and the input wait's share.
OVERHEAD_TARGET = (("kd", "fitnet", "at"), 1.05)
KERAS_TARGETS = {"kd": 0.95, "fitnet": 0.8}
INPUT_WAIT_TARGET = 0.05
SECTION = "Throughput"
# The PyTorch anchor: the student step (cross-entropy, SGD with momentum 0.9)
# of these zoo models in kerakd and in PyTorch, on CIFAR-100-shaped batches;
# the target is kerakd / PyTorch <= ANCHOR_TARGET.
ANCHOR_MODELS = ("resnet8x4", "wrn_16_2", "resnet18_cifar")
ANCHOR_SHAPE, ANCHOR_CLASSES, ANCHOR_BATCH_SIZE = (32, 32, 3), 100, 64
ANCHOR_TARGET = 1.10
ANCHOR_KEY = "pytorch"

FLAGS = flags.FLAGS
flags.DEFINE_list("pairs", list(PAIRS), f"Pairs to benchmark, of {list(PAIRS)}.")
flags.DEFINE_list("methods", None, "Methods to benchmark (default: all registered).")
flags.DEFINE_integer("steps", 30, "Timed steps per configuration.")
flags.DEFINE_integer("warmup", 5, "Untimed steps before them (the first compiles).")
flags.DEFINE_bool("mixed_precision", False,
                  "mixed_bfloat16 (mixed_float16 on a GPU), as kerakd-train.")
flags.DEFINE_bool("jit_compile", False, "Compile every step with XLA.")
flags.DEFINE_bool("flops", True, "Count each step's FLOPs (traces it once more).")
flags.DEFINE_list("anchor_models", list(ANCHOR_MODELS),
                  "Zoo models whose student step is timed against its PyTorch "
                  "reference (kerakd/torch_reference.py); empty: no anchor.")
flags.DEFINE_integer("anchor_batch_size", ANCHOR_BATCH_SIZE, "Batch of the anchor's steps.")
flags.DEFINE_integer("torch_threads", None,
                     "torch.set_num_threads for the anchor (default: torch's own).")
flags.DEFINE_string("output", "docs/benchmarks.md",
                    "Markdown file whose Throughput section gets the tables.")
flags.DEFINE_string("results_dir", "benchmarks/results", "Where the JSON goes.")


# -- measuring ------------------------------------------------------------


class MemoryUse:
    """Memory a configuration takes while it is built and warmed up.

    On a GPU: the allocator's peak (`tf.config.experimental.get_memory_info`).
    On a CPU, where TensorFlow reports none: the growth of the process's
    resident set size (Linux's /proc/self/statm), which misses memory freed
    before the end.
    """

    def __init__(self):
        self.gpu = bool(tf.config.list_logical_devices("GPU"))
        if self.gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
        self.start = self._used()

    @property
    def kind(self):
        return "GPU allocator peak" if self.gpu else "growth of the process's RSS"

    def _used(self):
        if self.gpu:
            return tf.config.experimental.get_memory_info("GPU:0")["peak"]
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def mib(self):
        return (self._used() - (0 if self.gpu else self.start)) / 2**20


@dataclasses.dataclass
class Config:
    """One timed configuration: a step that waits for its results, a function
    counting its FLOPs, and the memory it took to build and warm up."""

    step: Callable
    flops: Callable
    memory_mib: float


def warmed_up(build):
    """The `Config` of `build() -> (step, flops)`, after --warmup steps."""
    memory = MemoryUse()
    step, flops = build()
    for _ in range(FLAGS.warmup):
        step()
    return Config(step, flops, memory.mib())


def interleaved_medians(steps):
    """Median seconds of each `{name: step}` over --steps rounds of one step of
    each: a change in the machine's load affects all of them alike."""
    times = {name: [] for name in steps}
    for _ in range(FLAGS.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def train_step_flops(model, inputs, labels):
    """Float operations of one traced `model.train_step` (forward, backward and
    update); see `graph_flops`."""
    specs = keras.tree.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), (inputs, labels))
    return graph_flops(tf.function(model.train_step).get_concrete_function(specs).graph)


def forward_flops(function, images):
    """Float operations of `function(images)`, traced; see `graph_flops`."""
    return graph_flops(tf.function(function, autograph=False).get_concrete_function(
        tf.TensorSpec(images.shape, images.dtype)).graph)


def graph_flops(graph):
    """Float operations of the ops a function graph's results need, from each
    op's registered statistics (those `tf.compat.v1.profiler` sums:
    convolutions, matmuls, elementwise math; not batch norm, nor ops inside
    nested functions).

    Ops that no result needs are left out, as the runtime prunes them: e.g.
    the gradients through a teacher that runs inside the gradient tape.
    """
    total = 0
    for op in needed_ops(graph):
        try:
            total += tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value or 0
        except ValueError:  # no statistics registered for this op type
            pass
    return int(total)


def needed_ops(graph):
    """The ops of `graph` that its outputs and control outputs depend on."""
    pending = [t.op for t in graph.outputs] + list(graph.control_outputs)
    needed = set()
    while pending:
        op = pending.pop()
        if op not in needed:
            needed.add(op)
            pending.extend([t.op for t in op.inputs] + list(op.control_inputs))
    return needed


# -- configurations -------------------------------------------------------


def _sgd():
    return keras.optimizers.SGD(0.05, momentum=0.9)


def make_method(name):
    """Method `name`; one with a memory bank gets `BANK_ROWS` rows."""
    if "num_data" in kerakd_flags.method_arguments(name):
        return methods.get(name, num_data=BANK_ROWS)
    return methods.get(name)


def make_distiller(pair, method, teacher):
    student = kerakd.models.get(pair.student, pair.num_classes, pair.image_shape)
    distiller = kerakd.Distiller(
        student, method, teacher if method.requires_teacher else None)
    distiller.compile(_sgd(), jit_compile=FLAGS.jit_compile)
    return distiller


def make_keras_student(pair):
    student = kerakd.models.get(pair.student, pair.num_classes, pair.image_shape)
    student.compile(_sgd(), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"], jit_compile=FLAGS.jit_compile)
    return student


def keras_distillation_loss(counterpart, teacher, student):
    """The `keras.distillation` loss matching a kerakd method, and a student
    loss weight (KD's 0.1; Keras's default 0.5 for the feature pair: weights
    do not change a step's cost)."""
    if counterpart == "LogitsDistillation":
        # KLDivergence (not the "kl_divergence" string) makes Keras soften both
        # distributions: Hinton's KD, as kerakd's `kd`.
        return keras.distillation.LogitsDistillation(
            temperature=4.0, loss=keras.losses.KLDivergence()), 0.1
    return keras.distillation.FeatureDistillation(
        "mse",
        teacher_layer_name=resolve_taps(teacher, "stages")[FEATURE_STAGE],
        student_layer_name=resolve_taps(student, "stages")[FEATURE_STAGE],
    ), 0.5


def make_keras_distiller(pair, counterpart, teacher):
    student = kerakd.models.get(pair.student, pair.num_classes, pair.image_shape)
    loss, student_weight = keras_distillation_loss(counterpart, teacher, student)
    distiller = keras.distillation.Distiller(
        teacher, student, loss, student_loss_weight=student_weight)
    distiller.compile(_sgd(), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=FLAGS.jit_compile)
    return distiller


def trainable_parameters(layer):
    return int(sum(np.prod(v.shape) for v in layer.trainable_weights))


def training(model, inputs, labels):
    """`(step, flops)` of `model.train_on_batch` on one batch."""
    return (lambda: model.train_on_batch(inputs, labels),
            lambda: train_step_flops(model, inputs, labels))


def input_wait(distiller, dataset, batch_size):
    """Share of a step fed by `dataset` (prefetching) spent in `next()`.

    Also times the pipeline alone (`next()` with no step): its time per batch
    is what the step must hide.
    """
    iterator = iter(dataset)
    waits, totals = [], []
    for step in range(FLAGS.warmup + FLAGS.steps):
        start = time.perf_counter()
        inputs, labels = next(iterator)
        fed = time.perf_counter()
        distiller.train_on_batch(inputs, labels)
        if step >= FLAGS.warmup:
            waits.append(fed - start)
            totals.append(time.perf_counter() - start)
    pipeline_alone = interleaved_medians({"next": lambda: next(iterator)})["next"]
    return {
        "wait_share": float(sum(waits) / sum(totals)),
        "step_s": float(np.median(totals)),
        "pipeline_alone_s_per_batch": pipeline_alone,
        "batch_size": batch_size,
    }


def pipeline_for(pair, with_index, views=("weak",)):
    """kerakd's training pipeline (standard augmentation, prefetch) over random
    images in memory, with the pair's dataset's shape and normalisation (as
    the Fashion-MNIST source reads its IDX files into memory)."""
    rng = np.random.default_rng(0)
    split = (rng.integers(0, 256, (PIPELINE_EXAMPLES, *pair.image_shape), np.uint8),
             rng.integers(0, pair.num_classes, PIPELINE_EXAMPLES))
    source = sources.ArraySource(pair.dataset, split, split, pair.num_classes)
    return pipeline.training_dataset(source, pair.batch_size, with_index=with_index,
                                     views=views, repeat=True, seed=0)


def build_configs(pair, method_names, teacher, batch):
    """Every `Config` of a pair, warmed up, and `{method: Distiller}`, and
    `{method: why it was skipped}`."""
    images, labels = batch["images"], batch["labels"]
    infer = tf.function(lambda x: teacher(x, training=False), autograph=False,
                        jit_compile=FLAGS.jit_compile)
    configs = {
        "teacher_inference": warmed_up(lambda: (
            lambda: infer(images).numpy(),
            lambda: forward_flops(lambda x: teacher(x, training=False), images))),
        "keras_student": warmed_up(
            lambda: training(make_keras_student(pair), images, labels)),
        "kerakd_student": warmed_up(lambda: training(
            make_distiller(pair, methods.get("none"), teacher), images, labels)),
    }
    distillers, skipped = {}, {}
    for name in method_names:
        gc.collect()
        method = make_method(name)
        inputs = {"images": images}
        if method.needs_index:
            inputs["index"] = batch["index"]
        if method.needs_strong_view:  # mlkd: the second, strongly augmented view
            inputs["strong_images"] = batch["strong_images"]
        if len(inputs) == 1:
            inputs = images
        try:
            distillers[name] = make_distiller(pair, method, teacher)
            configs[name] = warmed_up(lambda: training(distillers[name], inputs, labels))
        except ValueError as error:  # the pair does not suit the method
            distillers.pop(name, None)
            skipped[name] = str(error)
            continue
        if name in KERAS_COUNTERPARTS:
            configs[f"keras:{name}"] = warmed_up(lambda: training(
                make_keras_distiller(pair, KERAS_COUNTERPARTS[name], teacher),
                images, labels))
    return configs, distillers, skipped


def measured(config, seconds, batch_size):
    result = {"median_s": seconds, "images_per_s": batch_size / seconds,
              "memory_mib": config.memory_mib}
    if FLAGS.flops:
        result["flops"] = config.flops()
    return result


def benchmark_pair(pair, method_names):
    """All measurements of one pair; see the module docstring."""
    keras.utils.set_random_seed(0)
    teacher = kerakd.models.get(pair.teacher, pair.num_classes, pair.image_shape)
    inputs, labels = next(iter(pipeline_for(pair, with_index=True, views=("weak", "strong"))))
    batch = {"images": inputs["images"], "index": inputs["index"],
             "strong_images": inputs["strong_images"], "labels": labels}
    configs, distillers, skipped = build_configs(pair, method_names, teacher, batch)
    medians = interleaved_medians({name: c.step for name, c in configs.items()})
    results = {name: measured(configs[name], seconds, pair.batch_size)
               for name, seconds in medians.items()}

    result = {**dataclasses.asdict(pair), "skipped": skipped, "methods": {},
              "keras_distillation": {}}
    for key in ("teacher_inference", "keras_student", "kerakd_student"):
        result[key] = results[key]
    for name, distiller in distillers.items():
        result["methods"][name] = method_result(
            results[name], distiller.method, result)
        if f"keras:{name}" in results:
            keras_result = results[f"keras:{name}"]
            keras_result.update(loss=KERAS_COUNTERPARTS[name],
                                kerakd_over_keras=medians[name] / medians[f"keras:{name}"])
            result["keras_distillation"][name] = keras_result
    input_method = INPUT_WAIT_METHOD if INPUT_WAIT_METHOD in distillers else next(
        iter(distillers), None)
    if input_method:
        method = distillers[input_method].method
        dataset = pipeline_for(pair, with_index=method.needs_index,
                               views=("weak", "strong") if method.needs_strong_view
                               else ("weak",))
        result["input"] = {"method": input_method, **input_wait(
            distillers[input_method], dataset, pair.batch_size)}
    return result


def method_result(result, method, baseline):
    """A method's measurements, with its overhead over its parts (the
    teacher's inference, when it has a teacher, and kerakd's plain student
    step) and its extra parameters and FLOPs."""
    parts = [baseline["kerakd_student"]]
    if method.requires_teacher:
        parts.append(baseline["teacher_inference"])
    result.update(
        overhead=result["median_s"] / sum(p["median_s"] for p in parts),
        extra_trainable_params=trainable_parameters(method),
        needs_index=bool(method.needs_index),
    )
    if FLAGS.flops:
        result["extra_flops"] = result["flops"] - sum(p["flops"] for p in parts)
    return result

# -- the PyTorch anchor ---------------------------------------------------


def torch_or_reason():
    """`(torch, kerakd.torch_reference)`, or `(None, why not)`."""
    try:
        import torch

        from kerakd import torch_reference
    except ImportError as error:
        return None, f"torch is not installed ({error}); `pip install -e \".[torch]\"`"
    return torch, torch_reference


def torch_training(torch, net, images, labels):
    """`(step, trainable parameters)` of PyTorch's student step on one batch:
    cross-entropy, `SGD(0.05, momentum=0.9)`, as kerakd's `_sgd()`."""
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(labels.astype(np.int64))

    def step():
        optimizer.zero_grad(set_to_none=True)
        _, logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        return loss.item()  # waits for the step, as train_on_batch does

    return step, sum(p.numel() for p in net.parameters() if p.requires_grad)


def benchmark_anchor(names, batch_size):
    """kerakd's `Distiller(student, "none")` step and PyTorch's step of each
    zoo model in `names`, timed in turns; `torch` is None (with `reason`)
    without torch, and then only kerakd's steps are timed."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch_size, *ANCHOR_SHAPE)).astype(np.float32)
    labels = rng.integers(0, ANCHOR_CLASSES, batch_size)
    torch, reference = torch_or_reason()
    result = {"batch_size": batch_size, "image_shape": ANCHOR_SHAPE,
              "num_classes": ANCHOR_CLASSES, "torch": None, "models": {}}
    if torch is None:
        result["reason"] = reference
    else:
        if FLAGS.torch_threads:
            torch.set_num_threads(FLAGS.torch_threads)
        torch.manual_seed(0)
        result["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads()}
    steps, params = {}, {}
    for name in names:
        student = kerakd.models.get(name, ANCHOR_CLASSES, ANCHOR_SHAPE)
        distiller = kerakd.Distiller(student, methods.get("none"))
        distiller.compile(_sgd(), jit_compile=FLAGS.jit_compile)
        steps[f"kerakd:{name}"] = lambda d=distiller: d.train_on_batch(images, labels)
        params[f"kerakd:{name}"] = trainable_parameters(student)
        if torch is not None:
            net = reference.build(name, ANCHOR_CLASSES, ANCHOR_SHAPE[0])
            steps[f"torch:{name}"], params[f"torch:{name}"] = torch_training(
                torch, net, images, labels)
    for step in steps.values():
        for _ in range(FLAGS.warmup):
            step()
    medians = interleaved_medians(steps)
    for name in names:
        entry = {"kerakd_s": medians[f"kerakd:{name}"],
                 "kerakd_params": params[f"kerakd:{name}"]}
        if torch is not None:
            entry.update(torch_s=medians[f"torch:{name}"],
                         torch_params=params[f"torch:{name}"],
                         kerakd_over_torch=entry["kerakd_s"] / medians[f"torch:{name}"])
        result["models"][name] = entry
    return result



# -- reporting ------------------------------------------------------------


def machine():
    gpus = tf.config.list_logical_devices("GPU")
    return {
        "cpu_cores": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "gpu": [d.name for d in gpus] or None,
        "tensorflow": tf.__version__,
        "keras": keras.version(),
        "python": platform.python_version(),
        "load_average_1m": os.getloadavg()[0],
        "memory": MemoryUse().kind,
    }


def _ms(seconds):
    return f"{1000 * seconds:.1f}"


def _gflops(flops):
    return "" if flops is None else f"{flops / 1e9:.2f}"


def _mflops(flops):
    return "" if flops is None else f"{flops / 1e6:.1f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _baseline_rows(pair_result):
    p = pair_result
    rows = [
        (f"teacher inference ({p['teacher']}, training=False)", p["teacher_inference"]),
        (f"student, Keras `train_on_batch` ({p['student']})", p["keras_student"]),
        (f"student, kerakd `none` ({p['student']})", p["kerakd_student"]),
    ]
    return [(label, _ms(r["median_s"]), f"{r['images_per_s']:.0f}",
             _gflops(r.get("flops")), f"{r['memory_mib']:.0f}")
            for label, r in rows]


def _method_rows(pair_result):
    return [
        (name, _ms(r["median_s"]), f"{r['images_per_s']:.0f}", f"{r['overhead']:.2f}",
         f"{r['extra_trainable_params']:,}", _mflops(r.get("extra_flops")),
         f"{r['memory_mib']:.0f}")
        for name, r in pair_result["methods"].items()
    ]


def _keras_rows(pair_result):
    return [
        (f"`{name}` vs `{r['loss']}`", _ms(pair_result["methods"][name]["median_s"]),
         _ms(r["median_s"]), f"{r['kerakd_over_keras']:.2f}",
         _gflops(pair_result["methods"][name].get("flops")),
         _gflops(r.get("flops")))
        for name, r in pair_result["keras_distillation"].items()
    ]


def target_lines(pair_result):
    """Each target this run can check, and whether it was met."""
    lines = []
    names, limit = OVERHEAD_TARGET
    for name in names:
        if name in pair_result["methods"]:
            value = pair_result["methods"][name]["overhead"]
            lines.append(_verdict(f"overhead of `{name}` <= {limit}", value, limit))
    for name, limit in KERAS_TARGETS.items():
        if name in pair_result["keras_distillation"]:
            value = pair_result["keras_distillation"][name]["kerakd_over_keras"]
            lines.append(_verdict(f"`{name}` step <= {limit}x keras.distillation's",
                                  value, limit))
    if "input" in pair_result:
        lines.append(_verdict(f"input wait < {INPUT_WAIT_TARGET:.0%}",
                              pair_result["input"]["wait_share"], INPUT_WAIT_TARGET))
    return lines


def _verdict(target, value, limit):
    return f"- {target}: {value:.3g} — {'met' if value <= limit else 'MISSED'}"


def pair_markdown(key, pair_result, run):
    """The generated block of one pair: command, machine, tables, targets."""
    p, m = pair_result, run["machine"]
    lines = [
        f"<!-- throughput:{key} -->",
        f"### `{key}` ({p['dataset']}-shaped): {p['teacher']} -> {p['student']}, "
        f"{'x'.join(map(str, p['image_shape']))}, {p['num_classes']} classes, "
        f"batch {p['batch_size']}",
        "",
        f"`{run['command']}`",
        "",
        f"{run['date']}; {m['cpu_cores']} CPU cores ({m['processor']}), "
        f"GPU: {m['gpu'] or 'none'}; TensorFlow {m['tensorflow']}, Keras {m['keras']}; "
        f"load average {m['load_average_1m']:.1f} at the start, "
        f"{m['load_average_1m_end']:.1f} at the end. Medians of "
        f"{run['settings']['steps']} rounds of one step of every configuration, "
        f"after {run['settings']['warmup']} warm-up steps each; "
        f"mixed precision {run['settings']['mixed_precision']}, "
        f"XLA {run['settings']['jit_compile']}. Memory: {m['memory']} over "
        "a configuration's build and warm-up.",
        "",
        *_table(["step", "median ms", "images/s", "GFLOPs/step", "memory MiB"],
                _baseline_rows(p)),
        "",
        *_table(["method", "median ms", "images/s", "overhead", "extra params",
                 "extra MFLOPs/step", "memory MiB"], _method_rows(p)),
    ]
    if p["keras_distillation"]:
        lines += ["", *_table(["kerakd vs keras.distillation", "kerakd ms", "keras ms",
                               "kerakd / keras", "kerakd GFLOPs/step",
                               "keras GFLOPs/step"], _keras_rows(p))]
    if "input" in p:
        i = p["input"]
        lines += ["", f"Input (`{i['method']}` fed by `kerakd.data.pipeline."
                  f"training_dataset`, prefetching): waits {i['wait_share']:.1%} of "
                  f"the step time; step {_ms(i['step_s'])} ms, pipeline alone "
                  f"{_ms(i['pipeline_alone_s_per_batch'])} ms per batch."]
    for name, reason in p["skipped"].items():
        lines += ["", f"Skipped `{name}`: {reason}"]
    lines += ["", "Targets:", "", *target_lines(p), f"<!-- /throughput:{key} -->"]
    return "\n".join(lines)


def anchor_markdown(anchor, run):
    """The generated block of the PyTorch anchor."""
    a, m = anchor, run["machine"]
    shape = "x".join(map(str, a["image_shape"]))
    torch_info = (f"PyTorch {a['torch']['version']} ({a['torch']['threads']} threads)"
                  if a["torch"] else "PyTorch: none")
    lines = [
        f"<!-- throughput:{ANCHOR_KEY} -->",
        f"### PyTorch anchor: the student step, kerakd vs PyTorch ({shape}, "
        f"{a['num_classes']} classes, batch {a['batch_size']})",
        "",
        f"`{run['command']}`",
        "",
        f"{run['date']}; {m['cpu_cores']} CPU cores ({m['processor']}), "
        f"GPU: {m['gpu'] or 'none'}; TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"{torch_info}; load average {m['load_average_1m']:.1f} at the start, "
        f"{m['load_average_1m_end']:.1f} at the end. Medians of "
        f"{run['settings']['steps']} rounds of one step of every configuration, after "
        f"{run['settings']['warmup']} warm-up steps each. Both steps: cross-entropy, "
        "SGD (0.05, momentum 0.9); kerakd's is `Distiller(student, \"none\")`, "
        "PyTorch's the reference architecture of `kerakd/torch_reference.py` in "
        "train mode.",
        "",
    ]
    if not a["torch"]:
        lines += [f"No PyTorch columns: {a['reason']}.", ""]
    rows = []
    for name, r in a["models"].items():
        if a["torch"]:
            rows.append((name, f"{r['kerakd_params']:,}", f"{r['torch_params']:,}",
                         _ms(r["torch_s"]), _ms(r["kerakd_s"]),
                         f"{r['kerakd_over_torch']:.2f}"))
        else:
            rows.append((name, f"{r['kerakd_params']:,}", "no torch", "no torch",
                         _ms(r["kerakd_s"]), "no torch"))
    lines += _table(["student step", "kerakd params", "PyTorch params", "PyTorch ms",
                     "kerakd ms", "kerakd / PyTorch"], rows)
    if a["torch"]:
        lines += ["", "Targets:", ""] + [
            _verdict(f"`{name}` step <= {ANCHOR_TARGET}x PyTorch's",
                     r["kerakd_over_torch"], ANCHOR_TARGET)
            for name, r in a["models"].items()]
    lines.append(f"<!-- /throughput:{ANCHOR_KEY} -->")
    return "\n".join(lines)


def update_markdown(path, blocks):
    """Replaces each `{key: block}` in the Throughput section of `path`, or
    appends it there (creating the file and section if needed)."""
    for key, block in blocks.items():
        replace_block(path, block_pattern(key), SECTION, block)


def block_pattern(key):
    return re.compile(rf"<!-- throughput:{key} -->.*?<!-- /throughput:{key} -->", re.S)


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    unknown = [p for p in FLAGS.pairs if p not in PAIRS]
    if unknown:
        raise app.UsageError(f"--pairs: unknown {unknown}; use some of {list(PAIRS)}.")
    method_names = FLAGS.methods or methods.available()
    for name in method_names:
        methods.registry.factory(name)  # fails early on an unknown name
    keras.config.set_dtype_policy(precision_policy(FLAGS.mixed_precision))
    run = {
        "command": shlex.join(["python", "benchmarks/throughput.py", *sys.argv[1:]]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {k: FLAGS[k].value for k in
                     ("steps", "warmup", "mixed_precision", "jit_compile")},
        "pairs": {},
    }
    if FLAGS.anchor_models:
        unknown = [n for n in FLAGS.anchor_models if n not in kerakd.models.available()]
        if unknown:
            raise app.UsageError(f"--anchor_models: unknown {unknown}.")
        run["anchor"] = benchmark_anchor(FLAGS.anchor_models, FLAGS.anchor_batch_size)
    for key in FLAGS.pairs:
        run["pairs"][key] = benchmark_pair(PAIRS[key], method_names)
    run["machine"]["load_average_1m_end"] = os.getloadavg()[0]
    os.makedirs(FLAGS.results_dir, exist_ok=True)
    stamp = run["date"].replace(":", "")
    parts = [*FLAGS.pairs] + ([ANCHOR_KEY] if "anchor" in run else [])
    results = os.path.join(FLAGS.results_dir, f"throughput-{'-'.join(parts)}-{stamp}.json")
    with open(results, "w") as file:
        json.dump(run, file, indent=1)
    blocks = {key: pair_markdown(key, r, run) for key, r in run["pairs"].items()}
    if "anchor" in run:
        blocks[ANCHOR_KEY] = anchor_markdown(run["anchor"], run)
    update_markdown(FLAGS.output, blocks)
    print("\n\n".join(blocks.values()))
    print(f"Wrote {results} and {FLAGS.output}.")


if __name__ == "__main__":
    app.run(main)
