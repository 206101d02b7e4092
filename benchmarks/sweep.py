"""One-seed sweeps of a method's settings, at the accuracy benchmark's budget.

    python benchmarks/sweep.py --sweep=at:at_at_weight=100 --sweep=at:at_at_weight=300
    python benchmarks/sweep.py --sweep=frskd:frskd_self_kd_weight=1,frskd_self_at_weight=10
    python benchmarks/sweep.py --report_only

When a method does not beat the plain student, this measures why: each
`--sweep=<method>:<flag>=<value>[,<flag>=<value>...]` is one `kerakd-train`
run with exactly the recipe of `benchmarks/accuracy.py` (the method's config,
the same pair, budget, seed and committed teacher) plus those flags. Runs go
under `--runs_dir` (default `runs/sweeps/<budget>`), one directory per
setting; like the accuracy benchmark's they are reused when finished and
resume when killed. The table (every setting run so far, with the
benchmark's own run of the config as the reference row, and the plain
student of the same seed) goes into the `<!-- sweeps -->` block of
`--output`.

Every flag of `benchmarks/accuracy.py` applies (`--epochs`, `--dataset`, ...);
`--seeds` is ignored: a sweep runs `--sweep_seed` only.
"""

import json
import os
import re
import shlex

import accuracy  # noqa: E402  (benchmarks/ is on the path of a script run from it)
from absl import app
from absl import flags
from markdown_block import replace_block

from kerakd import flags as kerakd_flags

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("sweep", [], "`<method>:<flag>=<value>[,<flag>=<value>...]`: "
                          "one run of the method's benchmark recipe with these "
                          "kerakd-train flags (without the leading --).")
flags.DEFINE_integer("sweep_seed", 0, "The seed of every sweep run.", lower_bound=0)
flags.DEFINE_string("sweep_pair", "resnet", "The pair of accuracy.PAIRS the sweeps "
                    "run on.")
flags.DEFINE_string("sweep_runs_dir", None, "Where the sweep runs go (default "
                    "runs/sweeps/<budget>).")
BLOCK = re.compile(r"<!-- sweeps -->.*?<!-- /sweeps -->", re.S)
# Every setting swept so far, so that `--report_only` and later sweeps list
# the earlier ones too.
RECORD = "sweeps.json"


def parse_sweep(text):
    """`"at:at_at_weight=100,x=1"` -> `("at", (("at_at_weight", "100"), ("x", "1")))`."""
    method, sep, settings = text.partition(":")
    pairs = [s.split("=", 1) for s in settings.split(",") if s]
    if not sep or not pairs or any(len(p) != 2 or not p[0] for p in pairs):
        raise app.UsageError(f"--sweep={text!r}: write <method>:<flag>=<value>[,...], "
                             "e.g. --sweep=at:at_at_weight=100.")
    if accuracy.registered_method(method) is None:
        raise app.UsageError(f"--sweep={text!r}: unknown method '{method}'.")
    # A deprecated alias names its flag by the new name, so that the recipe's
    # own flag is overridden rather than set twice.
    return method, tuple((kerakd_flags.canonical_flag_name(k.lstrip("-")), v)
                         for k, v in pairs)


def setting_name(settings):
    return ",".join(f"{k}={v}" for k, v in settings)


def sweep_run(pair, method, settings, budget, teacher):
    """The results of one setting: a `train_student`-like record."""
    seed = FLAGS.sweep_seed
    # The benchmark's own layout (<owner>/<method>/seed<n>), with the setting
    # before the seed.
    benchmark_dir = accuracy.run_dir(pair, method, seed)
    model_dir = os.path.join(FLAGS.sweep_runs_dir,
                             os.path.relpath(os.path.dirname(benchmark_dir), FLAGS.runs_dir),
                             setting_name(settings), os.path.basename(benchmark_dir))
    args = accuracy.student_args(pair, method, seed, budget, teacher, model_dir)
    args += [f"--{k}={v}" for k, v in settings]
    results = accuracy.train_or_reuse(args, model_dir)
    return {"method": method, "setting": setting_name(settings), "model_dir": model_dir,
            **{k: results[k] for k in ("final_accuracy", "best_accuracy", "final_metrics",
                                       "error", "missing") if k in results}}


def reference_run(pair, method, budget, teacher):
    """The accuracy benchmark's own run of the config at the same seed."""
    run = accuracy.train_student(pair, method, FLAGS.sweep_seed, budget, teacher)
    return {"method": method, "setting": "(config)", **run}


def ce_weight(model_dir):
    """The weight of the label cross-entropy in the run of `model_dir`: its
    method made from the run's flags as `kerakd-train` reads them
    (`kerakd.flags.method_hparams`), so an unset weight takes the method's
    preset (LS's 0.1)."""
    import kerakd.methods
    from kerakd import run_directory

    run_flags = kerakd_flags.parse(
        ["kerakd-train", f"--flagfile={os.path.join(model_dir, run_directory.RUN_FLAGS)}"])
    hparams = kerakd_flags.method_hparams(run_flags)
    for name, values in hparams.items():
        if "num_data" in kerakd_flags.method_arguments(name):
            values.setdefault("num_data", 1)  # a memory bank's size weights no term
    if len(hparams) == 1:
        (hparams,) = hparams.values()
    method = kerakd.methods.get(run_flags.method, **hparams)
    return float(method.term_weights.get("ce", 0.0))


def row(run, plain):
    if "missing" in run:
        return f"| {run['method']} | {run['setting']} | not run yet | | | | |"
    if "error" in run:
        return f"| {run['method']} | {run['setting']} | diverged | | | | |"
    metrics = run["final_metrics"]
    gain = (f"{100 * (run['final_accuracy'] - plain):+.2f}" if plain is not None else "-")
    extra = (metrics.get("loss", float("nan"))
             - ce_weight(run["model_dir"]) * metrics.get("ce", float("nan")))
    return (f"| {run['method']} | {run['setting']} | {100 * run['final_accuracy']:.2f} | "
            f"{gain} | {100 * metrics.get('accuracy', float('nan')):.2f} | "
            f"{metrics.get('ce', float('nan')):.3f} | {extra:.3f} |")


def markdown(runs, plain, command):
    lines = ["<!-- sweeps -->",
             f"Command: `{command}` (one seed, {FLAGS.sweep_seed}; the accuracy "
             "benchmark's budget, pair and teacher). *Gain* is against the plain "
             f"student of the same seed ({'-' if plain is None else f'{100 * plain:.2f}'} %); "
             "*train acc.*, *CE* and *other terms* (the weighted loss minus the weighted "
             "CE, with weight decay excluded) are the last epoch's training means.",
             "",
             "| method | setting | final accuracy (%) | gain (points) | train acc. (%) "
             "| CE | other terms |",
             "|---|---|---|---|---|---|---|"]
    lines += [row(run, plain) for run in runs]
    lines.append("<!-- /sweeps -->")
    return "\n".join(lines)


def main(argv):
    del argv
    sweeps = [parse_sweep(text) for text in FLAGS.sweep]
    budget_name = "full" if FLAGS.full else "default"
    FLAGS.runs_dir = FLAGS.runs_dir or os.path.join("runs", "accuracy", budget_name)
    FLAGS.sweep_runs_dir = FLAGS.sweep_runs_dir or os.path.join("runs", "sweeps", budget_name)
    record_path = os.path.join(FLAGS.sweep_runs_dir, RECORD)
    recorded = []
    if os.path.exists(record_path):
        with open(record_path) as file:
            recorded = [parse_sweep(f"{m}:{setting_name(s)}") for m, s in json.load(file)]
    sweeps = recorded + [s for s in sweeps if s not in recorded]
    os.makedirs(FLAGS.sweep_runs_dir, exist_ok=True)
    with open(record_path, "w") as file:
        json.dump(sweeps, file)
    budget = accuracy.chosen_budget()
    pair = accuracy.PAIRS[FLAGS.sweep_pair]
    teacher = accuracy.get_teacher(pair, budget)
    plain = accuracy.train_student(pair, "none", FLAGS.sweep_seed, budget, teacher)
    runs = []
    for method in dict.fromkeys(m for m, _ in sweeps):
        runs.append(reference_run(pair, method, budget, teacher))
        runs += [sweep_run(pair, m, s, budget, teacher) for m, s in sweeps if m == method]
    command = shlex.join(["python", "benchmarks/sweep.py",
                          *[f"--sweep={m}:{setting_name(s)}" for m, s in sweeps]])
    block = markdown(runs, plain.get("final_accuracy"), command)
    replace_block(FLAGS.output, BLOCK, accuracy.SECTION, block)
    print(block, flush=True)


if __name__ == "__main__":
    app.run(main)
