"""Test accuracy of kerakd's distillation methods on Fashion-MNIST, over seeds.

    python benchmarks/accuracy.py                       # the 2-core CPU budget
    python benchmarks/accuracy.py --full                # the long budget (a GPU)
    python benchmarks/accuracy.py --seeds=2 --methods=none,kd,afd
    python benchmarks/accuracy.py --extra_methods=crd,dkd

Every run is an ordinary `kerakd-train` run (`kerakd.train.run_with_args`),
with the recipe of the method's config (`configs/fmnist/<method>.flags`, else
`configs/<method>.flags`) and this script's dataset, models and budget. For
each pair (`PAIRS`) it takes the committed teacher (`benchmarks/teachers/`,
on Fashion-MNIST; `--train_teacher` trains one instead, as it does on other
datasets), then trains the student with each of the pair's methods and each
seed; methods without a teacher (the plain student
and the self-distillation methods) depend only on the student, so pairs with
the same student share those runs. Runs go under `--runs_dir`; a run whose
`results.json` exists is reused (a run of other flags there stops the script
rather than be reported as this recipe's), and a killed run resumes from its
last epoch, so the same command run again finishes an interrupted benchmark.

Outputs: the raw results as JSON in `--results_dir`, a bar chart of final test
accuracy and the mean validation-accuracy curves (read from each run's
TensorBoard logs) as PNGs in `--figures_dir`, and the tables in the
"Accuracy" section of `--output`.
"""

import dataclasses
import datetime
import glob
import json
import os
import platform
import re
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from kerakd import data  # noqa: E402
from kerakd import flags as kerakd_flags  # noqa: E402
from kerakd import methods  # noqa: E402
from kerakd import train  # noqa: E402
from markdown_block import replace_block  # noqa: E402
from kerakd.callbacks import NonFiniteLossError  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "configs")
# The methods of the first pair; `--extra_methods` adds other registered ones.
DEFAULT_METHODS = ("none", "kd", "fitnet", "at", "afd", "semckd", "aid",
                   "lfma", "frskd", "dsn")
# Cross-layer methods, compared on a pair of different architecture families.
CROSS_LAYER_METHODS = ("none", "kd", "afd", "semckd")
SECTION = "Accuracy"
# Written in a run's directory when its loss became NaN or Inf.
DIVERGED = "diverged.json"
BLOCK = re.compile(r"<!-- accuracy -->.*?<!-- /accuracy -->", re.S)


@dataclasses.dataclass(frozen=True)
class Pair:
    """A teacher -> student pair, the methods compared on it (`None`: all) and
    the number of seeds of each (`--seeds` overrides it).

    `student_learning_rate`, when set, replaces every config's learning rate
    for this student (RepDistiller trains MobileNet and ShuffleNet students
    at 0.01 with batch 64, the others at 0.05; the fmnist configs double
    both for batch 128).
    """

    teacher: str
    student: str
    methods: tuple = None
    student_learning_rate: float = None
    seeds: int = 3


PAIRS = {
    "resnet": Pair("resnet20", "resnet8"),
    # Another architecture family for the student (MobileNetV2's inverted
    # residuals and depthwise convolutions, 4 stage taps of other widths and
    # resolutions than the teacher's 3): the cross-layer methods must find
    # which layers to pair. Reuses the first pair's teacher; other-family
    # teachers cost too much here (a vgg8 step is 5x resnet20's on 2 cores,
    # shufflenetv1 10x).
    # At the configs' lr 0.1 even the plain MobileNetV2 blew up (test CE
    # 31,000 after epoch 1) and AFD never left 12%; at 0.01 the plain one
    # reached 29% in this budget.
    "resnet_mobilenet": Pair("resnet20", "mobilenetv2", CROSS_LAYER_METHODS,
                             student_learning_rate=0.02, seeds=2),
}
TEACHERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "teachers")
# Teachers committed with the project, by (dataset, architecture): a `.keras`
# file and a JSON of how it was made and how it scores.
COMMITTED_TEACHERS = {("fashion_mnist", "resnet20"): "resnet20_fashion_mnist"}


@dataclasses.dataclass(frozen=True)
class Budget:
    """How long each run trains: `epochs` of `steps_per_epoch` batches (`None`:
    a full pass over the training set), the learning rate divided by 10 at half
    and three quarters of the epochs."""

    epochs: int
    steps_per_epoch: int
    teacher_epochs: int
    teacher_steps_per_epoch: int
    batch_size: int = 128

    def describe(self, num_train):
        """The budget in words, for a training set of `num_train` images."""

        def part(epochs, steps):
            images = epochs * (steps or -(-num_train // self.batch_size)) * self.batch_size
            return (f"{epochs} epochs of {steps or 'all'} batches of {self.batch_size} "
                    f"({images:,} images, {images / num_train:.2f} passes)")

        return (f"teacher: {part(self.teacher_epochs, self.teacher_steps_per_epoch)}; "
                f"each student: {part(self.epochs, self.steps_per_epoch)}")


BUDGETS = {
    # Two full passes per student (4 epochs of 235 batches of 128: 940 steps),
    # the least at which a comparison of methods means something here: at a
    # sixth of a pass most methods lost to the plain student only because
    # their extra terms had not paid off yet. About 7 hours on an idle 2-core
    # CPU for every run (a resnet8 step ~0.2 s, SemCKD's ~1.1 s, MobileNetV2's
    # ~1 s). The teacher recipe (when one is trained) is
    # configs/fmnist/teacher.flags: 12 full passes.
    "default": Budget(epochs=4, steps_per_epoch=235, teacher_epochs=12,
                      teacher_steps_per_epoch=None),
    # The configs' recipe, for a GPU: 30 full passes per run.
    "full": Budget(epochs=30, steps_per_epoch=None, teacher_epochs=30,
                   teacher_steps_per_epoch=None),
}

FLAGS = flags.FLAGS
flags.DEFINE_bool("full", False, "Run the long budget (for a GPU) instead of the "
                  "2-core CPU one.")
flags.DEFINE_list("pairs", list(PAIRS), f"Pairs to benchmark, of {list(PAIRS)}.")
flags.DEFINE_list("extra_methods", [], "Registered methods, or configs of other settings "
                  "(kd_ls: KD with logit standardisation), to add to the first pair "
                  "(e.g. crd,dkd), with the recipe of their config.")
flags.DEFINE_list("methods", None, "Only these of each pair's methods (default: all "
                  "of them).")
flags.DEFINE_integer("seeds", None, "Seeds per method (0, 1, ...); default: the "
                     "pair's (3 on resnet, 2 on resnet_mobilenet).", lower_bound=1)
flags.DEFINE_bool("report_only", False, "Train nothing: report the runs that have "
                  "finished (a benchmark spanning several sessions), listing the "
                  "missing ones.")
flags.DEFINE_bool("train_teacher", False, "Train each pair's teacher (with "
                  "configs/fmnist/teacher.flags and the budget's teacher epochs) "
                  "instead of taking the committed one of benchmarks/teachers/.")
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset (synthetic: a smoke test).")
flags.DEFINE_string("data_dir", None, "Passed to kerakd-train's --data_dir.")
flags.DEFINE_integer("epochs", None, "Overrides the budget's student epochs.",
                     lower_bound=1)
flags.DEFINE_integer("teacher_epochs", None, "Overrides the budget's teacher epochs.",
                     lower_bound=1)
flags.DEFINE_integer("steps_per_epoch", None, "Overrides the budget's steps per "
                     "epoch (teacher and students).", lower_bound=1)
flags.DEFINE_integer("batch_size", None, "Overrides the budget's batch size.",
                     lower_bound=1)
flags.DEFINE_string("runs_dir", None, "Where the runs go (default "
                    "runs/accuracy/<budget>).")
flags.DEFINE_string("results_dir", "benchmarks/results", "Where the JSON goes.")
flags.DEFINE_string("figures_dir", "docs", "Where the PNGs go.")
flags.DEFINE_string("output", "docs/benchmarks.md",
                    "Markdown file whose Accuracy section gets the tables.")


# -- budget and runs --------------------------------------------------------


def chosen_budget():
    """The `--full` or default budget with the override flags applied."""
    budget = BUDGETS["full" if FLAGS.full else "default"]
    overrides = {
        "epochs": FLAGS.epochs, "teacher_epochs": FLAGS.teacher_epochs,
        "steps_per_epoch": FLAGS.steps_per_epoch,
        "teacher_steps_per_epoch": FLAGS.steps_per_epoch,
        "batch_size": FLAGS.batch_size,
    }
    return dataclasses.replace(budget, **{k: v for k, v in overrides.items() if v})


def milestones(epochs):
    """Learning-rate milestones at half and three quarters of `epochs` (as
    `configs/fmnist`: 4,6 of 8), as a `--lr_milestones` value."""
    marks = sorted({int(epochs * f) for f in (0.5, 0.75)} - {0})
    return ",".join(str(m) for m in marks if m < epochs)


def config_path(method):
    """The method's Fashion-MNIST config, else its CIFAR one (`method` is a
    registered name, or a config's name such as `kd_ls`)."""
    fmnist = os.path.join(CONFIGS, "fmnist", f"{method}.flags")
    return fmnist if os.path.exists(fmnist) else os.path.join(CONFIGS, f"{method}.flags")


def registered_method(method):
    """The registered method a benchmark entry trains: the name itself, or the
    `--method` of the config of that name (`kd_ls` -> `kd`)."""
    if method in methods.available():
        return method
    path = config_path(method)
    if os.path.exists(path):
        with open(path) as file:
            for line in file:
                if line.startswith("--method="):
                    return line.strip().split("=", 1)[1]
    return None


def run_args(config, student, epochs, steps_per_epoch, budget, seed, model_dir,
             teacher=None):
    """`kerakd-train` arguments: the config's recipe, then this benchmark's data,
    models, budget and seed (later flags win)."""
    args = [f"--flagfile={config}", f"--dataset={FLAGS.dataset}", f"--student={student}",
            f"--epochs={epochs}", f"--lr_milestones={milestones(epochs)}",
            f"--batch_size={budget.batch_size}", f"--seed={seed}",
            f"--model_dir={model_dir}"]
    if steps_per_epoch:
        args.append(f"--steps_per_epoch={steps_per_epoch}")
    if FLAGS.data_dir:
        args.append(f"--data_dir={FLAGS.data_dir}")
    if teacher:
        args.append(f"--teacher={teacher}")
    return args


def train_or_reuse(args, model_dir):
    """Results of the run in `model_dir`: its `results.json`, `{"error": ...}`
    for a run that diverged (recorded in `DIVERGED`, so it is not retried), or
    a new (or resumed) training with `args`.

    Raises:
        SystemExit: `model_dir` holds a run of other flags (another budget or
            config): reusing it would report numbers of another recipe.
    """
    for name in (train.RESULTS, DIVERGED):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            check_same_flags(args, model_dir)
            print(f"accuracy: reusing {model_dir}", flush=True)
            with open(path) as file:
                return json.load(file)
    if FLAGS.report_only:
        print(f"accuracy: not run yet: {model_dir}", flush=True)
        return {"missing": True}
    print(f"accuracy: training {model_dir}", flush=True)
    try:
        results = train.run_with_args(args)
    except NonFiniteLossError as error:
        results = {"error": str(error)}
        with open(os.path.join(model_dir, DIVERGED), "w") as file:
            json.dump(results, file)
    keras.backend.clear_session()
    return results


def check_same_flags(args, model_dir):
    """Exits, naming the flags, when the run in `model_dir` used other ones."""
    changed = train.flag_changes(model_dir, kerakd_flags.parse(["kerakd-train", *args]))
    if changed:
        raise SystemExit(
            f"accuracy: {model_dir} holds a run of other flags ({'; '.join(changed)}); "
            "its numbers are not this benchmark's. Move it away, or pass another "
            "--runs_dir.")


def validation_curve(model_dir):
    """Validation accuracy after each epoch, from the run's TensorBoard logs
    (the last value written for an epoch wins, as after a resumed run)."""
    by_epoch = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "logs", "validation",
                                              "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == "epoch_accuracy":
                    by_epoch[event.step] = float(tf.make_ndarray(value.tensor))
    return [by_epoch[e] for e in sorted(by_epoch)]


def pair_methods(key, pair):
    """The methods benchmarked on a pair, as the flags choose."""
    names = list(pair.methods or DEFAULT_METHODS)
    if key == FLAGS.pairs[0]:
        names += [m for m in FLAGS.extra_methods if m not in names]
    return [m for m in names if not FLAGS.methods or m in FLAGS.methods]


def run_dir(pair, method, seed):
    """Teacher-free runs depend only on the student, so pairs share them."""
    owner = (f"{pair.teacher}-{pair.student}"
             if kerakd_flags.requires_teacher(registered_method(method))
             else pair.student)
    return os.path.join(FLAGS.runs_dir, owner, method, f"seed{seed}")


def summary(values):
    """Mean and sample standard deviation (`None` for a single value)."""
    return {"mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}


def committed_teacher(architecture):
    """The committed teacher of `architecture` on `--dataset` (its record,
    with the path of its `.keras` file), or None."""
    name = COMMITTED_TEACHERS.get((FLAGS.dataset, architecture))
    if name is None:
        return None
    with open(os.path.join(TEACHERS_DIR, f"{name}.json")) as file:
        record = json.load(file)
    return {**record, "file": os.path.join(TEACHERS_DIR, f"{name}.keras")}


def get_teacher(pair, budget):
    """The pair's committed teacher, else one trained alone with the teacher
    config: its results, with the path of its `.keras` file."""
    committed = None if FLAGS.train_teacher else committed_teacher(pair.teacher)
    if committed:
        print(f"accuracy: teacher {committed['file']}", flush=True)
        return committed
    teacher_dir = os.path.join(FLAGS.runs_dir, "teachers", pair.teacher)
    results = train_or_reuse(
        run_args(config_path("teacher"), pair.teacher, budget.teacher_epochs,
                 budget.teacher_steps_per_epoch, budget, 0, teacher_dir), teacher_dir)
    return {**results, "file": os.path.join(teacher_dir, "student.keras")}


def student_args(pair, method, seed, budget, teacher, model_dir):
    """`kerakd-train` arguments of a student run of `method` on `pair` (its
    config, the budget, the pair's teacher and learning rate) into `model_dir`."""
    needs_teacher = kerakd_flags.requires_teacher(registered_method(method))
    args = run_args(config_path(method), pair.student, budget.epochs, budget.steps_per_epoch,
                    budget, seed, model_dir, teacher["file"] if needs_teacher else None)
    if pair.student_learning_rate:
        args.append(f"--learning_rate={pair.student_learning_rate}")
    return args


def train_student(pair, method, seed, budget, teacher):
    """One student run's results and validation curve."""
    model_dir = run_dir(pair, method, seed)
    results = train_or_reuse(student_args(pair, method, seed, budget, teacher, model_dir),
                             model_dir)
    if "missing" in results:
        return {"seed": seed, "model_dir": model_dir, "missing": True}
    if "error" in results:
        return {"seed": seed, "model_dir": model_dir, "error": results["error"]}
    return {"seed": seed, "model_dir": model_dir,
            "final_accuracy": results["final_accuracy"],
            "best_accuracy": results["best_accuracy"],
            "wall_time_s": results["wall_time_s"],
            "validation_accuracy": validation_curve(model_dir),
            "final_metrics": results["final_metrics"]}


def pair_result(pair, teacher, runs):
    """`{teacher, student, methods: {method: runs and their mean ± std}}`."""
    result = {"teacher": pair.teacher, "student": pair.student,
              "teacher_accuracy": teacher["final_accuracy"],
              "teacher_wall_time_s": teacher["wall_time_s"],
              "teacher_file": os.path.relpath(teacher["file"], os.path.dirname(CONFIGS))
              if "command" in teacher else None, "methods": {}}
    for method, method_runs in runs.items():
        missing = sum(1 for r in method_runs if "missing" in r)
        method_runs = [r for r in method_runs if "missing" not in r]
        finished = [r for r in method_runs if "error" not in r]
        entry = {"config": os.path.relpath(config_path(method), os.path.dirname(CONFIGS)),
                 "runs": method_runs, "diverged": len(method_runs) - len(finished),
                 "missing": missing}
        if finished:
            entry.update({f"{k}_accuracy": summary([r[f"{k}_accuracy"] for r in finished])
                          for k in ("final", "best")},
                         wall_time_s=summary([r["wall_time_s"] for r in finished]))
        result["methods"][method] = entry
    plain = finished_methods(result).get("none")
    for entry in finished_methods(result).values():
        entry["gain_over_plain"] = (entry["final_accuracy"]["mean"]
                                    - plain["final_accuracy"]["mean"]) if plain else None
    return result


def finished_methods(pair_result):
    """The pair's methods with at least one run that did not diverge."""
    return {m: e for m, e in pair_result["methods"].items() if "final_accuracy" in e}


def pair_seeds(pair):
    return FLAGS.seeds or pair.seeds


def benchmark(budget):
    """Trains (or reuses) the teachers, then every pair x method run seed by
    seed: an interrupted benchmark has the first seeds of every method."""
    pairs = {key: PAIRS[key] for key in FLAGS.pairs}
    teachers = {key: get_teacher(pair, budget) for key, pair in pairs.items()}
    runs = {key: {m: [] for m in pair_methods(key, pair)} for key, pair in pairs.items()}
    for seed in range(max(pair_seeds(pair) for pair in pairs.values())):
        for key, pair in pairs.items():
            if seed >= pair_seeds(pair):
                continue
            for method, method_runs in runs[key].items():
                method_runs.append(train_student(pair, method, seed, budget, teachers[key]))
    return {key: pair_result(pair, teachers[key], runs[key]) for key, pair in pairs.items()}


# -- reporting --------------------------------------------------------------


def _pct(stats):
    if stats["std"] is None:
        return f"{100 * stats['mean']:.2f}"
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


def pair_table(key, pair_result):
    """A Markdown table of one pair's methods."""
    r = pair_result
    made = (f"committed: `{r['teacher_file']}`" if r.get("teacher_file")
            else f"trained in {r['teacher_wall_time_s']:.0f} s")
    lines = [f"**{key}**: {r['teacher']} -> {r['student']} (teacher "
             f"{100 * r['teacher_accuracy']:.2f}%, {made})",
             "",
             "| method | final accuracy (%) | best accuracy (%) | gain over plain (points) "
             "| wall time per run (s) |",
             "|---|---|---|---|---|"]
    for method, m in r["methods"].items():
        missing = f" ({m['missing']} seed(s) not run yet)" if m.get("missing") else ""
        if "final_accuracy" not in m:
            state = (f"diverged ({m['diverged']} of {len(m['runs'])} seeds)" if m["runs"]
                     else "not run yet")
            lines.append(f"| {method} | {state}{missing} | - | - | - |")
            continue
        diverged = f" ({m['diverged']} more diverged)" if m["diverged"] else ""
        diverged += missing
        gain = "-" if m["gain_over_plain"] is None or method == "none" else (
            f"{100 * m['gain_over_plain']:+.2f}")
        lines.append(f"| {method} | {_pct(m['final_accuracy'])}{diverged} "
                     f"| {_pct(m['best_accuracy'])} "
                     f"| {gain} | {m['wall_time_s']['mean']:.0f} |")
    return "\n".join(lines)


def total_wall_time(run):
    """Seconds of training of the teachers and runs, each counted once (pairs
    share the plain and self-distilled students and may share a teacher)."""
    seconds = {}
    for pair_result in run["pairs"].values():
        if not pair_result.get("teacher_file"):  # a committed one took no time here
            seconds[pair_result["teacher"]] = pair_result["teacher_wall_time_s"]
        for entry in pair_result["methods"].values():
            seconds.update({r["model_dir"]: r["wall_time_s"] for r in entry["runs"]
                            if "error" not in r})
    return sum(seconds.values())


def markdown_block(run, figures):
    """The generated part of the Accuracy section (between its markers)."""
    parts = [
        "<!-- accuracy -->",
        f"Command: `{run['command']}` ({run['date']}, {run['machine']['cpus']} CPU "
        f"cores, {run['machine']['gpus']} GPUs). Training wall time in all: "
        f"{total_wall_time(run) / 60:.0f} min (the sum over the teachers and every "
        "run, each counted once).",
        "",
        f"Budget ({run['budget_name']}): {run['budget_text']}. Learning rate divided "
        "by 10 at half and three quarters of the epochs; test accuracy on the full "
        f"test set after each epoch. Seeds per method: "
        f"{', '.join(f'{n} on {key}' for key, n in run['seeds'].items())}; mean ± sample "
        "std over seeds; *final* is after the last epoch, *best* the best epoch; the "
        "gain is the difference of final means. Raw results: "
        f"`{run['results_file']}`.",
        "",
    ]
    for key, pair_result in run["pairs"].items():
        parts += [pair_table(key, pair_result), ""]
    parts += [f"![final test accuracy per method]({figures['bar']})",
              "", f"![validation accuracy per epoch]({figures['curves']})",
              "<!-- /accuracy -->"]
    return "\n".join(parts)


def update_markdown(path, block):
    """Replaces the generated block of the Accuracy section of `path` (text
    written around it stays), or appends the section (creating the file)."""
    replace_block(path, BLOCK, SECTION, block)


def plot_bars(run, path):
    """Final test accuracy per method (mean, std error bars), one panel a pair;
    the dashed line is the plain student, the dotted one the teacher."""
    pairs = run["pairs"]
    figure, axes = plt.subplots(1, len(pairs), figsize=(5 + 4 * len(pairs), 4),
                                squeeze=False, gridspec_kw={"width_ratios": [
                                    len(finished_methods(p)) for p in pairs.values()]})
    for axis, (key, pair_result) in zip(axes[0], pairs.items()):
        methods_run = finished_methods(pair_result)
        names = list(methods_run)
        stats = [methods_run[n]["final_accuracy"] for n in names]
        means = [100 * s["mean"] for s in stats]
        errors = [100 * (s["std"] or 0) for s in stats]
        axis.bar(names, means, yerr=errors, capsize=3,
                 color=["grey" if n == "none" else "tab:blue" for n in names])
        if "none" in methods_run:
            axis.axhline(100 * methods_run["none"]["final_accuracy"]["mean"],
                         color="grey", linestyle="--", linewidth=1)
        teacher = 100 * pair_result["teacher_accuracy"]
        axis.axhline(teacher, color="black", linestyle=":", linewidth=1,
                     label=f"teacher {pair_result['teacher']}")
        low = min(m - e for m, e in zip(means, errors))
        axis.set_ylim(max(0, low - 5), min(100, max(*means, teacher) + 5))
        axis.legend(fontsize="small", loc="lower right")
        axis.set_title(f"{pair_result['teacher']} -> {pair_result['student']}")
        axis.set_ylabel("final test accuracy (%)")
        axis.tick_params(axis="x", rotation=45)
    seeds = "/".join(str(n) for n in run["seeds"].values())
    figure.suptitle(f"{run['dataset']}, {seeds} seeds ({run['budget_name']} budget)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_curves(run, path):
    """Mean validation accuracy per epoch of each method, one panel a pair."""
    pairs = run["pairs"]
    figure, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4), squeeze=False)
    for axis, (key, pair_result) in zip(axes[0], pairs.items()):
        for method, m in finished_methods(pair_result).items():
            curves = [r["validation_accuracy"] for r in m["runs"] if "error" not in r]
            length = min(len(c) for c in curves)
            mean = 100 * np.mean([c[:length] for c in curves], axis=0)
            axis.plot(range(1, length + 1), mean, marker="o", label=method,
                      linestyle="--" if method == "none" else "-")
        axis.set_title(f"{pair_result['teacher']} -> {pair_result['student']}")
        axis.set_xlabel("epoch")
        axis.set_ylabel("validation accuracy (%), mean over seeds")
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def training_set_size():
    return data.get_source(FLAGS.dataset, FLAGS.data_dir).prepare().info.num_train


def machine():
    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "gpus": len(tf.config.list_physical_devices("GPU")),
            "tensorflow": tf.__version__, "keras": keras.__version__}


def check_flags():
    """Fails before any training on an unknown pair or method."""
    unknown = [p for p in FLAGS.pairs if p not in PAIRS]
    if unknown:
        raise app.UsageError(f"--pairs: unknown {unknown}; use some of {list(PAIRS)}.")
    for name in FLAGS.extra_methods + (FLAGS.methods or []):
        if registered_method(name) is None:
            raise app.UsageError(f"method '{name}' is neither registered ({methods.available()}) "
                                 "nor the name of a config in configs/fmnist/ or configs/.")


def main(argv):
    del argv
    check_flags()
    tf.get_logger().setLevel("ERROR")
    budget_name = "full" if FLAGS.full else "default"
    FLAGS.runs_dir = FLAGS.runs_dir or os.path.join("runs", "accuracy", budget_name)
    budget = chosen_budget()
    suffix = "" if FLAGS.dataset == "fashion_mnist" else f"-{FLAGS.dataset}"
    results_file = os.path.join(FLAGS.results_dir, f"accuracy-{budget_name}{suffix}.json")
    run = {"command": shlex.join(["python", "benchmarks/accuracy.py", *sys.argv[1:]]),
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": machine(), "dataset": FLAGS.dataset, "budget_name": budget_name,
           "budget": dataclasses.asdict(budget),
           "budget_text": budget.describe(training_set_size()),
           "seeds": {key: pair_seeds(PAIRS[key]) for key in FLAGS.pairs},
           "results_file": results_file}
    run["pairs"] = benchmark(budget)
    os.makedirs(FLAGS.results_dir, exist_ok=True)
    with open(results_file, "w") as file:
        json.dump(run, file, indent=1)
    os.makedirs(FLAGS.figures_dir, exist_ok=True)
    figures = {"bar": f"accuracy_bar{suffix}.png", "curves": f"accuracy_curves{suffix}.png"}
    plot_bars(run, os.path.join(FLAGS.figures_dir, figures["bar"]))
    plot_curves(run, os.path.join(FLAGS.figures_dir, figures["curves"]))
    relative = {k: os.path.relpath(os.path.join(FLAGS.figures_dir, v),
                                   os.path.dirname(os.path.abspath(FLAGS.output)))
                for k, v in figures.items()}
    update_markdown(FLAGS.output, markdown_block(run, relative))
    for key, pair_result in run["pairs"].items():
        print(pair_table(key, pair_result), flush=True)
    print(f"Wrote {results_file}, the figures in {FLAGS.figures_dir} and {FLAGS.output}.")


if __name__ == "__main__":
    app.run(main)
