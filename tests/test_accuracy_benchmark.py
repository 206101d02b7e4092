"""Smoke test of `benchmarks/accuracy.py` on generated data with a tiny budget."""

import json
import os
import subprocess
import sys

import pytest

# Subprocesses of minutes: skipped by the quick command (README, "Set up").
pytestmark = pytest.mark.slow

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
SCRIPT = os.path.join(BENCHMARKS, "accuracy.py")


def run_benchmark(tmp_path, epochs=1, check=True, extra=(), script=SCRIPT):
    args = [sys.executable, script, "--dataset=synthetic", "--pairs=resnet",
            "--methods=none,kd_ls", "--extra_methods=kd_ls", "--seeds=1", f"--epochs={epochs}", "--teacher_epochs=1",
            *extra,
            "--steps_per_epoch=1", "--batch_size=16",
            f"--runs_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'results'}",
            f"--figures_dir={tmp_path / 'docs'}", f"--output={tmp_path / 'docs' / 'b.md'}"]
    completed = subprocess.run(args, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if check:
        assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def test_writes_results_figures_and_section_then_reuses_runs(tmp_path):
    run_benchmark(tmp_path)
    with open(tmp_path / "results" / "accuracy-default-synthetic.json") as file:
        results = json.load(file)
    methods = results["pairs"]["resnet"]["methods"]
    # kd_ls: a config's name (KD with logit standardisation) runs as its method, kd.
    assert list(methods) == ["none", "kd_ls"]
    assert methods["kd_ls"]["runs"][0]["model_dir"].endswith(
        os.path.join("resnet20-resnet8", "kd_ls", "seed0"))
    for entry in methods.values():
        assert [r["seed"] for r in entry["runs"]] == [0]
        assert all(len(r["validation_accuracy"]) == 1 for r in entry["runs"])
        assert 0 <= entry["final_accuracy"]["mean"] <= 1
    for name in ("accuracy_bar-synthetic.png", "accuracy_curves-synthetic.png"):
        assert (tmp_path / "docs" / name).stat().st_size > 0
    section = (tmp_path / "docs" / "b.md").read_text()
    assert "## Accuracy" in section and "| kd_ls |" in section

    # A sweep of one setting of kd_ls, beside the benchmark's runs of the same recipe.
    sweep = run_benchmark(tmp_path, script=os.path.join(BENCHMARKS, "sweep.py"), extra=[
        "--sweep=kd_ls:kd_kd_weight=3", f"--sweep_runs_dir={tmp_path / 'sweeps'}"]).stdout
    assert sweep.count("accuracy: training") == 1  # the setting; the rest is reused
    run_flags = tmp_path / "sweeps" / "resnet20-resnet8" / "kd_ls" / "kd_kd_weight=3" / "seed0"
    assert "--kd_kd_weight=3.0" in (run_flags / "run.flags").read_text()
    table = (tmp_path / "docs" / "b.md").read_text()
    assert "| kd_ls | (config) |" in table and "| kd_ls | kd_kd_weight=3 |" in table
    assert table.count("<!-- sweeps -->") == 1 and "| kd_ls |" in table.split("<!-- sweeps")[0]

    stdout = run_benchmark(tmp_path).stdout  # every run is finished: all are reused
    assert "accuracy: training" not in stdout
    assert (tmp_path / "docs" / "b.md").read_text().count("## Accuracy") == 1

    # A benchmark spanning sessions: report what has finished, train nothing.
    stdout = run_benchmark(tmp_path, extra=["--report_only", "--seeds=2"]).stdout
    assert "accuracy: training" not in stdout and "not run yet" in stdout
    assert "(1 seed(s) not run yet)" in (tmp_path / "docs" / "b.md").read_text()

    # Another budget in the same --runs_dir: refused, not reported as its own.
    refused = run_benchmark(tmp_path, epochs=2, check=False)
    assert refused.returncode != 0
    assert "holds a run of other flags (--epochs: 1 -> 2" in refused.stderr
