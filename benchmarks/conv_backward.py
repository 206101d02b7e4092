"""What TensorFlow offers on a CPU for convolution backward at small maps.

    python benchmarks/conv_backward.py --verbose_impl          # every option
    python benchmarks/conv_backward.py --options=baseline,matmul,torch \
        --cases="3x3 at 4x4x512,3x3 at 8x8x256,3x3 at 16x16x128" --rounds=10

Times the forward + backward pass (gradients of `sum(conv(x, w) * dy)` with
respect to the input and the kernel, batch 64, stride 1, SAME padding) of
the two slowest convolutions of the zoo's small maps by default: 3x3 at 4x4x512 (512 -> 512)
and 1x1 at 4x4x1024 (1024 -> 1024), the maps of the last stage of
resnet18_cifar and the wide projections of SemCKD/FRSKD; `--cases` adds
larger maps. Each option runs in a process of its own (environment
variables such as TF_ONEDNN_* are read when TensorFlow loads, thread counts
before it runs its first op); the processes take turns, one step each per
round, so that a change in the machine's load hits every option alike, and
the table gives medians and the ratio to `baseline`. Each option's gradients
are checked against `baseline`'s on the same data (max |difference| <= 1e-4
x max |gradient|); an option that cannot run says why.

`--verbose_impl` also runs one step of `baseline` with ONEDNN_VERBOSE=1 and
counts the oneDNN primitives it executed (which kernels TensorFlow chose).
Results go to `--results_dir` as JSON; the table is printed (the findings in
docs/benchmarks.md, "Convolution backward at small maps", quote a run).
"""

import argparse
import ctypes
import datetime
import json
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time

import numpy as np

CASES = {
    # name: (map size, input channels, output channels, kernel size)
    "3x3 at 4x4x512": (4, 512, 512, 3),
    "1x1 at 4x4x1024": (4, 1024, 1024, 1),
    # Larger maps, fewer channels (resnet18_cifar's other stages): where the
    # crossover of the options lies.
    "3x3 at 8x8x256": (8, 256, 256, 3),
    "3x3 at 16x16x128": (16, 128, 128, 3),
    "3x3 at 32x32x64": (32, 64, 64, 3),
}
DEFAULT_CASES = ("3x3 at 4x4x512", "1x1 at 4x4x1024")
BATCH = 64
TOLERANCE = 1e-4

# option: (environment, settings). Settings: "intra"/"inter" thread counts
# (tf.config.threading), "grappler" (tf.config.optimizer experimental options),
# "format" ("NHWC" or "NCHW"), "impl" ("conv2d", "matmul": the convolution as
# one matmul over shifted copies of the input, im2col; "torch": PyTorch).
OPTIONS = {
    "baseline": ({}, {}),
    "nchw": ({}, {"format": "NCHW"}),
    "intra_1": ({}, {"intra": 1}),
    "intra_4": ({}, {"intra": 4}),
    "inter_1": ({}, {"inter": 1}),
    "caller_thread": ({"TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD": "1"}, {}),
    "system_allocator": ({"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1"}, {}),
    "no_remapping": ({}, {"grappler": {"remapping": False}}),
    "no_layout_optimizer": ({}, {"grappler": {"layout_optimizer": False}}),
    "no_grappler": ({}, {"grappler": {"disable_meta_optimizer": True}}),
    "no_onednn": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, {}),
    "matmul": ({}, {"impl": "matmul"}),
    "torch": ({}, {"impl": "torch"}),
}


def data(case, seed=0):
    """x (NHWC), w (HWIO) and the output gradient dy of a case, in float32."""
    size, cin, cout, k = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, size, size, cin), np.float32)
    w = (rng.standard_normal((k, k, cin, cout), np.float32) / np.sqrt(k * k * cin)).astype(
        np.float32)
    dy = rng.standard_normal((BATCH, size, size, cout), np.float32)
    return x, w, dy


def im2col_conv(tf, x, w):
    """`tf.nn.conv2d(x, w, 1, "SAME")` (NHWC, odd square kernel, stride 1) as
    one matmul: the k*k shifted copies of the padded input side by side
    (im2col), times the kernel as a (k*k*cin, cout) matrix. Its backward is
    one matmul per operand too, where TensorFlow's convolution backward
    kernels run one small matmul per image."""
    k = w.shape[0]
    p = k // 2
    padded = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]]) if p else x
    h, wd = x.shape[1], x.shape[2]
    cols = [padded[:, i:i + h, j:j + wd, :] for i in range(k) for j in range(k)]
    cols = cols[0] if len(cols) == 1 else tf.concat(cols, axis=-1)
    flat = tf.reshape(cols, [-1, k * k * w.shape[2]])
    out = tf.matmul(flat, tf.reshape(w, [-1, w.shape[3]]))
    return tf.reshape(out, [-1, h, wd, w.shape[3]])


def tf_step(tf, settings, x, w, dy):
    """A compiled step returning the (input, kernel) gradients of
    `sum(conv(x, w) * dy)`, and a function giving them as NHWC/HWIO arrays."""
    nchw = settings.get("format") == "NCHW"
    if nchw:
        x, dy = x.transpose(0, 3, 1, 2), dy.transpose(0, 3, 1, 2)
    x, w, dy = tf.constant(x), tf.Variable(w), tf.constant(dy)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            if settings.get("impl") == "matmul":
                y = im2col_conv(tf, x, w)
            else:
                y = tf.nn.conv2d(x, w, 1, "SAME",
                                 data_format="NCHW" if nchw else "NHWC")
            loss = tf.reduce_sum(y * dy)
        return tape.gradient(loss, [x, w])

    def gradients():
        gx, gw = (t.numpy() for t in step())
        return (gx.transpose(0, 2, 3, 1) if nchw else gx), gw

    return step, gradients


def torch_step(x, w, dy):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_()
    w = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))).requires_grad_()
    dy = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))
    padding = w.shape[-1] // 2

    def step():
        x.grad = w.grad = None
        y = torch.nn.functional.conv2d(x, w, padding=padding)
        (y * dy).sum().backward()
        return x.grad, w.grad

    def gradients():
        gx, gw = step()
        return gx.numpy().transpose(0, 2, 3, 1), gw.numpy().transpose(2, 3, 1, 0)

    return step, gradients


def worker(option, cases, connection, verbose_file=None):
    """Runs in its own process: sets the option up, then answers "step" (one
    timed step per case) and "gradients" until "stop"."""
    environment, settings = OPTIONS[option]
    os.environ.update(environment)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if verbose_file:
        os.environ["ONEDNN_VERBOSE"] = "1"
        descriptor = os.open(verbose_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(descriptor, 1)
    try:
        if settings.get("impl") == "torch":
            import torch

            steps = {case: torch_step(*data(case)) for case in cases}
            version = f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)"
        else:
            import tensorflow as tf

            tf.get_logger().setLevel("ERROR")  # one tf.function per case: no retracing notes
            if "intra" in settings:
                tf.config.threading.set_intra_op_parallelism_threads(settings["intra"])
            if "inter" in settings:
                tf.config.threading.set_inter_op_parallelism_threads(settings["inter"])
            if "grappler" in settings:
                tf.config.optimizer.set_experimental_options(settings["grappler"])
            steps = {case: tf_step(tf, settings, *data(case)) for case in cases}
            version = f"TensorFlow {tf.__version__}"
        for step, _ in steps.values():  # compiles, and a failing option fails here
            step()
    except Exception as error:  # noqa: BLE001 (reported: the option cannot run)
        message = " ".join(str(error).split())  # one line, for the table
        connection.send({"error": f"{type(error).__name__}: {message[-300:]}"})
        return
    connection.send({"ready": version})
    while True:
        request = connection.recv()
        if request == "stop":
            return
        if request == "gradients":
            connection.send({case: g() for case, (_, g) in steps.items()})
            continue
        times = {}
        for case, (step, _) in steps.items():
            if verbose_file:  # marks where this case's oneDNN calls begin
                ctypes.CDLL(None).fflush(None)  # oneDNN's lines (C stdio) first
                print(f"kerakd-case,{case}", flush=True)
            start = time.perf_counter()
            step()
            times[case] = time.perf_counter() - start
        if verbose_file:
            ctypes.CDLL(None).fflush(None)
        connection.send(times)


def start(context, option, cases, verbose_file=None):
    parent, child = context.Pipe()
    process = context.Process(target=worker, args=(option, cases, child, verbose_file),
                              daemon=True)
    process.start()
    return process, parent


def verbose_implementations(context, cases):
    """The oneDNN primitives one step of `baseline` runs for each case
    (ONEDNN_VERBOSE=1, one process per case so that no line is misplaced):
    `{case: {"primitive implementation problem": count}}`."""
    found = {}
    for case in cases:
        with tempfile.NamedTemporaryFile(suffix=".log", delete=False) as file:
            path = file.name
        process, connection = start(context, "baseline", [case], path)
        reply = connection.recv()
        if "ready" in reply:
            connection.send("step")
            connection.recv()
            connection.send("stop")
        process.join(60)
        counts, marked = {}, False
        with open(path) as log:
            for line in log:
                fields = line.strip().split(",")
                if fields[0] == "kerakd-case":
                    marked, counts = True, {}  # the timed step's lines follow
                elif marked and "primitive" in fields and "exec" in fields:
                    # onednn_verbose,v1,primitive,exec,cpu,<primitive>,<impl>,...,<problem>,<ms>
                    at = fields.index("exec")
                    key = f"{fields[at + 2]} {fields[at + 3] or '-'} {fields[-2]}"
                    counts[key] = counts.get(key, 0) + 1
        os.remove(path)
        found[case] = counts
    return found


def run(options, cases, rounds, warmup):
    context = multiprocessing.get_context("spawn")
    workers, results = {}, {}
    for option in options:
        process, connection = start(context, option, cases)
        reply = connection.recv()
        if "error" in reply:
            results[option] = {"error": reply["error"]}
            process.join(10)
            print(f"{option}: cannot run: {reply['error']}", flush=True)
            continue
        workers[option] = (process, connection)
        results[option] = {"version": reply["ready"], "times": {c: [] for c in cases}}
        print(f"{option}: ready ({reply['ready']})", flush=True)
    for round_ in range(warmup + rounds):
        for option, (_, connection) in workers.items():
            connection.send("step")
            times = connection.recv()
            if round_ >= warmup:
                for case, seconds in times.items():
                    results[option]["times"][case].append(seconds)
        print(f"round {round_ + 1} of {warmup + rounds} done", flush=True)
    reference = None
    if "baseline" in workers:
        workers["baseline"][1].send("gradients")
        reference = workers["baseline"][1].recv()
    for option, (process, connection) in workers.items():
        result = results[option]
        result["median_ms"] = {c: 1000 * float(np.median(t)) for c, t in result["times"].items()}
        if reference is not None:
            connection.send("gradients")
            gradients = connection.recv()
            result["max_relative_difference"] = {
                case: max(float(np.max(np.abs(g - r)) / np.max(np.abs(r)))
                          for g, r in zip(gradients[case], reference[case]))
                for case in cases}
        connection.send("stop")
        process.join(30)
    return results


def table(results, cases):
    baseline = results.get("baseline", {}).get("median_ms")
    header = ["option"] + [f"{c} ms" for c in cases] + [f"{c} / baseline" for c in cases] + [
        "same gradients"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for option, r in results.items():
        if "error" in r:
            lines.append(f"| {option} | cannot run: {r['error']} |" + " |" * (len(header) - 2))
            continue
        ms = [f"{r['median_ms'][c]:.1f}" for c in cases]
        ratios = [f"{r['median_ms'][c] / baseline[c]:.2f}" if baseline else "" for c in cases]
        diffs = r.get("max_relative_difference")
        same = ("" if diffs is None else
                "yes" if max(diffs.values()) <= TOLERANCE else
                f"NO ({max(diffs.values()):.1e})")
        lines.append("| " + " | ".join([option, *ms, *ratios, same]) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--options", default=",".join(OPTIONS),
                        help=f"comma-separated, of {', '.join(OPTIONS)}")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--verbose_impl", action="store_true")
    parser.add_argument("--results_dir", default="benchmarks/results")
    args = parser.parse_args()
    options = args.options.split(",")
    cases = args.cases.split(",")
    unknown = [o for o in options if o not in OPTIONS] + [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown options or cases: {unknown}")
    report = {
        "command": shlex.join(["python", "benchmarks/conv_backward.py", *sys.argv[1:]]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu_cores": os.cpu_count(), "processor": platform.processor(),
                    "load_average_1m": os.getloadavg()[0]},
        "batch": BATCH, "cases": {c: CASES[c] for c in cases}, "rounds": args.rounds,
        "warmup": args.warmup, "results": run(options, cases, args.rounds, args.warmup),
    }
    report["machine"]["load_average_1m_end"] = os.getloadavg()[0]
    if args.verbose_impl:
        report["onednn_primitives"] = verbose_implementations(
            multiprocessing.get_context("spawn"), cases)
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir,
                        f"conv_backward-{report['date'].replace(':', '')}.json")
    with open(path, "w") as file:
        json.dump(report, file, indent=1)
    m = report["machine"]
    print(f"\n`{report['command']}`\n\n{report['date']}; {m['cpu_cores']} CPU cores; "
          f"load average {m['load_average_1m']:.1f} at the start, "
          f"{m['load_average_1m_end']:.1f} at the end; medians of {args.rounds} rounds "
          f"(one step of each option per round, after {args.warmup}), batch {BATCH}.\n")
    print(table(report["results"], cases))
    for case, primitives in report.get("onednn_primitives", {}).items():
        print(f"\noneDNN primitives of one baseline step, {case}:")
        for key, count in primitives.items():
            print(f"- {count} x {key}")
    print(f"\nWrote {path}.")


if __name__ == "__main__":
    main()
