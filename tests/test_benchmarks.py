"""Smoke test of `benchmarks/throughput.py`: a tiny run writes its JSON and tables."""

import json
import os
import subprocess
import sys

import pytest

# Subprocesses of minutes: skipped by the quick command (README, "Set up").
pytestmark = pytest.mark.slow

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "throughput.py")


def test_throughput_writes_results_and_markdown(tmp_path):
    markdown = tmp_path / "benchmarks.md"
    subprocess.run(
        [sys.executable, SCRIPT, "--pairs=fmnist", "--methods=kd", "--steps=2",
         "--warmup=1", "--noflops", f"--output={markdown}", f"--results_dir={tmp_path}"],
        check=True, capture_output=True, timeout=600,  # a hang guard, not a speed test
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )

    (results,) = tmp_path.glob("throughput-fmnist-*.json")
    run = json.loads(results.read_text())
    assert {"command", "date", "machine", "settings", "pairs"} <= set(run)
    pair = run["pairs"]["fmnist"]
    for key in ("teacher_inference", "keras_student", "kerakd_student"):
        assert pair[key]["median_s"] > 0 and pair[key]["images_per_s"] > 0, key
    kd = pair["methods"]["kd"]
    assert {"overhead", "extra_trainable_params", "memory_mib"} <= set(kd)
    assert kd["extra_trainable_params"] == 0
    assert set(pair["keras_distillation"]) == {"kd"}
    assert "kerakd_over_keras" in pair["keras_distillation"]["kd"]
    assert pair["input"]["method"] == "kd" and 0 <= pair["input"]["wait_share"] <= 1
    text = markdown.read_text()
    assert "## Throughput" in text and "<!-- throughput:fmnist -->" in text
