"""Smoke test of `benchmarks/accuracy.py` (and `benchmarks/sweep.py`) on generated
data with a tiny budget."""

import json
import os
import subprocess
import sys

import pytest

# Subprocesses of minutes: skipped by the quick command (README, "Set up").
pytestmark = pytest.mark.slow

RUNS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark_runs.py")


def benchmark_args(tmp_path, epochs=1, extra=()):
    return ["--dataset=synthetic", "--pairs=resnet", "--methods=none,kd_ls",
            "--extra_methods=kd_ls", "--seeds=1", f"--epochs={epochs}", "--teacher_epochs=1",
            *extra,
            "--steps_per_epoch=1", "--batch_size=16",
            f"--runs_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'results'}",
            f"--figures_dir={tmp_path / 'docs'}", f"--output={tmp_path / 'docs' / 'b.md'}"]


def run_calls(tmp_path, calls):
    """Each `(script, args, files)` as its command line would run it, in one
    process (tests/benchmark_runs.py: TensorFlow starts once, not per call):
    per call its returncode, stdout, stderr and the files as it left them."""
    spec, out = tmp_path / "calls.json", tmp_path / "calls-out.json"
    spec.write_text(json.dumps([{"script": script, "args": args, "files": [str(f) for f in files]}
                                for script, args, files in calls]))
    completed = subprocess.run([sys.executable, RUNS, str(spec), str(out)], capture_output=True,
                               text=True, timeout=1500,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())
    assert len(results) == len(calls)
    return results


def test_writes_results_figures_and_section_then_reuses_runs(tmp_path):
    docs, results_file = tmp_path / "docs", tmp_path / "results" / "accuracy-default-synthetic.json"
    figures = [docs / name for name in ("accuracy_bar-synthetic.png",
                                        "accuracy_curves-synthetic.png")]
    run_flags = tmp_path / "sweeps" / "resnet20-resnet8" / "kd_ls" / "kd_kd_weight=3" / "seed0"
    run_flags = run_flags / "run.flags"
    first, sweep, again, report, refused = run_calls(tmp_path, [
        ("accuracy", benchmark_args(tmp_path), [results_file, docs / "b.md", *figures]),
        # A sweep of one setting of kd_ls, beside the benchmark's runs of the same recipe.
        ("sweep", benchmark_args(tmp_path, extra=[
            "--sweep=kd_ls:kd_kd_weight=3", f"--sweep_runs_dir={tmp_path / 'sweeps'}"]),
         [docs / "b.md", run_flags, run_flags.parent / "results.json"]),
        ("accuracy", benchmark_args(tmp_path), [docs / "b.md"]),  # every run is reused
        # A benchmark spanning sessions: report what has finished, train nothing.
        ("accuracy", benchmark_args(tmp_path, extra=["--report_only", "--seeds=2"]),
         [docs / "b.md"]),
        # Another budget in the same --runs_dir: refused, not reported as its own.
        ("accuracy", benchmark_args(tmp_path, epochs=2), []),
    ])
    for name, completed in zip(("first", "sweep", "again", "report"), (first, sweep, again, report)):
        assert completed["returncode"] == 0, (name, completed["stderr"][-3000:])

    results = json.loads(first["files"][str(results_file)]["text"])
    methods = results["pairs"]["resnet"]["methods"]
    # kd_ls: a config's name (KD with logit standardisation) runs as its method, kd.
    assert list(methods) == ["none", "kd_ls"]
    assert methods["kd_ls"]["runs"][0]["model_dir"].endswith(
        os.path.join("resnet20-resnet8", "kd_ls", "seed0"))
    for entry in methods.values():
        assert [r["seed"] for r in entry["runs"]] == [0]
        assert all(len(r["validation_accuracy"]) == 1 for r in entry["runs"])
        assert 0 <= entry["final_accuracy"]["mean"] <= 1
    for figure in figures:
        assert first["files"][str(figure)]["size"] > 0
    section = first["files"][str(docs / "b.md")]["text"]
    assert "## Accuracy" in section and "| kd_ls |" in section

    assert sweep["stdout"].count("accuracy: training") == 1  # the setting; the rest is reused
    assert "--kd_kd_weight=3.0" in sweep["files"][str(run_flags)]["text"]
    table = sweep["files"][str(docs / "b.md")]["text"]
    assert "| kd_ls | (config) |" in table and "| kd_ls | kd_kd_weight=3 |" in table
    # "other terms" leaves out the weighted CE: LS's preset weight is 0.1, not 1.
    metrics = json.loads(sweep["files"][str(run_flags.parent / "results.json")]["text"])
    metrics = metrics["final_metrics"]
    (swept,) = [line for line in table.splitlines() if line.startswith("| kd_ls | kd_kd_weight=3 |")]
    other_terms = float(swept.strip(" |").split("|")[-1])
    assert abs(other_terms - (metrics["loss"] - 0.1 * metrics["ce"])) < 2e-3, swept
    assert table.count("<!-- sweeps -->") == 1 and "| kd_ls |" in table.split("<!-- sweeps")[0]

    assert "accuracy: training" not in again["stdout"]
    assert again["files"][str(docs / "b.md")]["text"].count("## Accuracy") == 1

    assert "accuracy: training" not in report["stdout"] and "not run yet" in report["stdout"]
    assert "(1 seed(s) not run yet)" in report["files"][str(docs / "b.md")]["text"]

    assert refused["returncode"] != 0
    assert "holds a run of other flags (--epochs: 1 -> 2" in refused["stderr"]
