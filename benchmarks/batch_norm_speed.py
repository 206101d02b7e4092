"""kerakd's BatchNorm in training: TensorFlow's fused kernel against op by op.

    python benchmarks/batch_norm_speed.py                            # layer and models
    python benchmarks/batch_norm_speed.py --models= --rounds=30      # the layer alone
    python benchmarks/batch_norm_speed.py --policy=mixed_bfloat16 --models=

The layer (`--cases`, default batch 64 at 32x32x64, 16x16x128, 8x8x256 and
4x4x512, the maps of resnet18_cifar's four stages): one compiled training
step, the gradients of `sum(y * dy)` for the input, gamma and beta (moving
statistics updated), of

- `fused`: `kerakd.nn.BatchNormalization()`, TensorFlow's FusedBatchNormV3;
- `unfused`: `kerakd.nn.BatchNormalization(fused=False)`, op by op;
- `keras`: `keras.layers.BatchNormalization`, op by op (Keras's own);
- `fused_upcast` (mixed policies only): the fused kernel on the input cast
  to float32 and its output cast back, where `fused` feeds it the half
  input itself;
- `torch`: `torch.nn.BatchNorm2d` in training mode (PyTorch, NCHW; float32
  only, skipped without torch);

and inference (`training=False`, forward only): `inference` is the layer's
(Keras's arithmetic, which `core_keras`'s copy repeats exactly),
`inference_fused` FusedBatchNormV3 with `is_training=False` on the same
statistics.

The models (`--models`, default resnet8x4 and resnet18_cifar): the student
training step of `Distiller(student, "none")` (cross-entropy, SGD 0.05 with
momentum 0.9, batch 64 of 32x32x3 images, 100 classes: throughput.py's
PyTorch anchor) with the zoo's fused layers (`fused`) and with a copy whose
BatchNorm layers say `fused=False` (`unfused`, the same weights).

Every round runs each configuration in turn (`--layer_repeats` layer steps,
one model step), so that a change in the machine's load hits them alike;
the tables give medians and the ratio to `unfused` (`inference_fused`: to
`inference`). The fused steps' gradients (and the models' first losses) are
compared with the unfused ones on the same data. Results go to
`--results_dir` as JSON; the tables are printed (docs/benchmarks.md, "Fused
BatchNorm", quotes a run).
"""

import datetime
import json
import os
import platform
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import kerakd  # noqa: E402

CASES = {"32x32x64": (32, 64), "16x16x128": (16, 128), "8x8x256": (8, 256), "4x4x512": (4, 512)}
LAYER_OPTIONS = ("fused", "unfused", "keras", "fused_upcast", "torch", "inference",
                 "inference_fused")
MODEL_OPTIONS = ("fused", "unfused")
IMAGE_SHAPE, NUM_CLASSES = (32, 32, 3), 100
# max |fused - unfused| / max |unfused|, per gradient: a few roundings of
# the policy's compute dtype.
TOLERANCE = {"float32": 1e-4, "mixed_float16": 4e-3, "mixed_bfloat16": 3e-2}

FLAGS = flags.FLAGS
flags.DEFINE_list("cases", list(CASES), f"Layer shapes, of {list(CASES)}.")
flags.DEFINE_list("options", list(LAYER_OPTIONS), f"Layer configurations, of {LAYER_OPTIONS}.")
flags.DEFINE_list("models", ["resnet8x4", "resnet18_cifar"], "Zoo models; empty: none.")
flags.DEFINE_integer("batch_size", 64, "Batch of every step.")
flags.DEFINE_integer("rounds", 15, "Timed rounds (one step of each configuration per round).")
flags.DEFINE_integer("warmup", 3, "Untimed steps of each configuration before them.")
flags.DEFINE_integer("layer_repeats", 5, "Layer steps per timing (a step takes milliseconds).")
flags.DEFINE_enum("policy", "float32", ["float32", "mixed_float16", "mixed_bfloat16"],
                  "Keras dtype policy of the TensorFlow layers and models.")
flags.DEFINE_bool("jit_compile", False, "Compile the TensorFlow steps with XLA.")
flags.DEFINE_string("results_dir", "benchmarks/results", "Where the JSON goes.")


# -- the layer ----------------------------------------------------------------


def layer_data(case, seed=0):
    """x, dy and the layer's weights (gamma, beta, moving mean and variance)."""
    size, channels = CASES[case]
    rng = np.random.default_rng(seed)
    shape = (FLAGS.batch_size, size, size, channels)
    x = rng.normal(1.0, 2.0, shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(size=channels),
               rng.normal(size=channels), rng.uniform(0.5, 2.0, channels)]
    return x, dy, [w.astype(np.float32) for w in weights]


def tf_layer_step(option, x, dy, weights):
    """`(step, result)`: the compiled step, and a function giving what it
    computes (the three gradients; the output, for inference) as arrays."""
    if option == "keras":
        layer = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype=FLAGS.policy)
    elif option == "fused_upcast":
        layer = kerakd.nn.BatchNormalization(dtype="float32")
    else:
        layer = kerakd.nn.BatchNormalization(fused=False if option == "unfused" else None,
                                             dtype=FLAGS.policy)
    layer.build(x.shape)
    layer.set_weights(weights)
    x, dy = tf.constant(x), tf.constant(dy)

    if option.startswith("inference"):
        if option == "inference_fused":
            def forward():
                stats = [tf.cast(v, "float32") for v in (layer.gamma, layer.beta,
                                                         layer.moving_mean, layer.moving_variance)]
                y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                    tf.cast(x, layer.compute_dtype), *stats, epsilon=layer.epsilon,
                    is_training=False)
                return y
        else:
            def forward():
                return layer(x, training=False)
        step = tf.function(forward, jit_compile=FLAGS.jit_compile)
        return step, lambda: [np.asarray(tf.cast(step(), "float32"))]

    half = keras.mixed_precision.Policy(FLAGS.policy).compute_dtype

    def forward(x):
        if option == "fused_upcast":
            return tf.cast(layer(tf.cast(tf.cast(x, half), "float32"), training=True), half)
        return layer(x, training=True)

    def train():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(forward(x), "float32") * dy)
        return tape.gradient(loss, [x, layer.gamma, layer.beta])

    step = tf.function(train, jit_compile=FLAGS.jit_compile)
    return step, lambda: [np.asarray(g) for g in step()]


def torch_layer_step(x, dy, weights):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_()
    dy = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))
    layer = torch.nn.BatchNorm2d(x.shape[1]).train()
    with torch.no_grad():
        for tensor, value in zip((layer.weight, layer.bias, layer.running_mean,
                                  layer.running_var), weights):
            tensor.copy_(torch.from_numpy(value))

    def step():
        x.grad = layer.weight.grad = layer.bias.grad = None
        (layer(x) * dy).sum().backward()
        return x.grad, layer.weight.grad, layer.bias.grad

    def result():
        gx, gw, gb = step()
        return [gx.numpy().transpose(0, 2, 3, 1), gw.numpy(), gb.numpy()]

    return step, result


def layer_steps(cases, options):
    """`{(case, option): (step, result)}`, and `{option: why it cannot run}`."""
    steps, skipped = {}, {}
    for option in options:
        if option == "torch":
            try:
                import torch  # noqa: F401
            except ImportError as error:
                skipped[option] = f"no torch ({error})"
                continue
            if FLAGS.policy != "float32":
                skipped[option] = "float32 only"
                continue
        if option == "fused_upcast" and FLAGS.policy == "float32":
            skipped[option] = "mixed policies only"
            continue
        for case in cases:
            data = layer_data(case)
            steps[case, option] = (torch_layer_step(*data) if option == "torch"
                                   else tf_layer_step(option, *data))
    return steps, skipped


# -- the models ---------------------------------------------------------------


def unfused_copy(model):
    """`model` (same weights) whose kerakd BatchNorm layers say `fused=False`."""

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, kerakd.nn.BatchNormalization):
            config["fused"] = False
        return type(layer).from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def model_steps(names):
    """`{(model, option): (step, loss of the first step)}` on one fixed batch."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((FLAGS.batch_size, *IMAGE_SHAPE)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, FLAGS.batch_size)
    steps = {}
    for name in names:
        keras.utils.set_random_seed(0)
        fused = kerakd.models.get(name, NUM_CLASSES, IMAGE_SHAPE)
        for option, student in (("fused", fused), ("unfused", unfused_copy(fused))):
            distiller = kerakd.Distiller(student, kerakd.methods.get("none"))
            distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                              jit_compile=FLAGS.jit_compile)
            first = float(distiller.train_on_batch(images, labels, return_dict=True)["loss"])
            steps[name, option] = (lambda d=distiller: d.train_on_batch(images, labels), first)
    return steps


# -- timing and reporting -----------------------------------------------------


def interleaved(steps, repeats=1):
    """Median seconds per step of each `{key: step}` over --rounds rounds of
    `repeats` steps of each, after --warmup steps of each."""
    for step in steps.values():
        for _ in range(FLAGS.warmup):
            step()
    times = {key: [] for key in steps}
    for round_ in range(FLAGS.rounds):
        for key, step in steps.items():
            start = time.perf_counter()
            for _ in range(repeats):
                step()
            times[key].append((time.perf_counter() - start) / repeats)
        print(f"round {round_ + 1} of {FLAGS.rounds}", flush=True)
    return {key: float(np.median(t)) for key, t in times.items()}


def relative_difference(results, reference):
    return max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
               for a, b in zip(results, reference))


def layer_table(result, cases):
    ms = result["median_ms"]
    header = ["option", *(f"{c} ms" for c in cases), *(f"{c} / unfused" for c in cases)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for option in result["options"]:
        if option in result["skipped"]:
            lines.append(f"| {option} | {result['skipped'][option]} |" + " |" * (len(header) - 2))
            continue
        times = [ms[f"{c} {option}"] for c in cases]
        base = "unfused" if not option.startswith("inference") else "inference"
        ratios = [ms[f"{c} {option}"] / ms[f"{c} {base}"] if f"{c} {base}" in ms else None
                  for c in cases]
        lines.append("| " + " | ".join(
            [option, *(f"{t:.1f}" for t in times),
             *("" if r is None else f"{r:.2f}" for r in ratios)]) + " |")
    return "\n".join(lines)


def model_table(result):
    lines = ["| model | fused ms | unfused ms | fused / unfused | first loss, fused | unfused |",
             "|---|---|---|---|---|---|"]
    for name, entry in result.items():
        lines.append(f"| {name} | {entry['fused_ms']:.1f} | {entry['unfused_ms']:.1f} | "
                     f"{entry['fused_over_unfused']:.2f} | {entry['fused_loss']:.6f} | "
                     f"{entry['unfused_loss']:.6f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    unknown = ([c for c in FLAGS.cases if c not in CASES]
               + [o for o in FLAGS.options if o not in LAYER_OPTIONS]
               + [m for m in FLAGS.models if m not in kerakd.models.available()])
    if unknown:
        raise app.UsageError(f"unknown cases, options or models: {unknown}")
    tf.get_logger().setLevel("ERROR")  # one tf.function per configuration: no retracing notes
    keras.utils.set_random_seed(0)
    report = {
        "command": shlex.join(["python", "benchmarks/batch_norm_speed.py", *sys.argv[1:]]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu_cores": os.cpu_count(), "processor": platform.processor(),
                    "tensorflow": tf.__version__, "keras": keras.version(),
                    "load_average_1m": os.getloadavg()[0]},
        "batch_size": FLAGS.batch_size, "policy": FLAGS.policy,
        "jit_compile": FLAGS.jit_compile, "rounds": FLAGS.rounds, "warmup": FLAGS.warmup,
        "layer_repeats": FLAGS.layer_repeats,
    }
    if FLAGS.cases and FLAGS.options:
        steps, skipped = layer_steps(FLAGS.cases, FLAGS.options)
        medians = interleaved({key: step for key, (step, _) in steps.items()},
                              FLAGS.layer_repeats)
        layer = {"options": FLAGS.options, "skipped": skipped,
                 "median_ms": {f"{c} {o}": 1000 * s for (c, o), s in medians.items()},
                 "max_relative_difference": {}}
        for (case, option), (_, result) in steps.items():
            base = "inference" if option.startswith("inference") else "unfused"
            if option != base and (case, base) in steps:
                layer["max_relative_difference"][f"{case} {option}"] = relative_difference(
                    result(), steps[case, base][1]())
        report["layer"] = layer
    if FLAGS.models:
        steps = model_steps(FLAGS.models)
        medians = interleaved({key: step for key, (step, _) in steps.items()})
        report["models"] = {
            name: {"fused_ms": 1000 * medians[name, "fused"],
                   "unfused_ms": 1000 * medians[name, "unfused"],
                   "fused_over_unfused": medians[name, "fused"] / medians[name, "unfused"],
                   "fused_loss": steps[name, "fused"][1],
                   "unfused_loss": steps[name, "unfused"][1]}
            for name in FLAGS.models}
    report["machine"]["load_average_1m_end"] = os.getloadavg()[0]
    os.makedirs(FLAGS.results_dir, exist_ok=True)
    path = os.path.join(FLAGS.results_dir,
                        f"batch_norm_speed-{report['date'].replace(':', '')}.json")
    with open(path, "w") as file:
        json.dump(report, file, indent=1)
    m = report["machine"]
    print(f"\n`{report['command']}`\n\n{report['date']}; {m['cpu_cores']} CPU cores; load "
          f"average {m['load_average_1m']:.1f} at the start, {m['load_average_1m_end']:.1f} "
          f"at the end; medians of {FLAGS.rounds} rounds (each configuration in turn: "
          f"{FLAGS.layer_repeats} layer steps or one model step, after {FLAGS.warmup}); "
          f"batch {FLAGS.batch_size}, {FLAGS.policy}"
          f"{', XLA' if FLAGS.jit_compile else ''}.\n")
    if "layer" in report:
        print(layer_table(report["layer"], FLAGS.cases))
        print("\nmax |difference| / max |unfused| (inference_fused: / inference):")
        for key, value in report["layer"]["max_relative_difference"].items():
            flag = "" if value <= TOLERANCE[FLAGS.policy] else "  (ABOVE the tolerance)"
            print(f"- {key}: {value:.1e}{flag}")
    if "models" in report:
        print()
        print(model_table(report["models"]))
    print(f"\nWrote {path}.")


if __name__ == "__main__":
    app.run(main)
