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


DEPLOY_SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "deploy.py")


def test_deploy_writes_results_plot_and_markdown(tmp_path):
    import keras

    import kerakd

    # A teacher file and one finished run (another, unfinished, must be skipped),
    # as the accuracy benchmark leaves them; untrained tiny models of the
    # synthetic dataset's shape.
    keras.utils.set_random_seed(0)
    teacher = tmp_path / "teacher.keras"
    kerakd.models.get("resnet8", 4, (16, 16, 3)).save(teacher)
    run_dir = tmp_path / "runs" / "resnet8" / "none" / "seed0"
    run_dir.mkdir(parents=True)
    kerakd.models.get("resnet8", 4, (16, 16, 3)).save(run_dir / "student.keras")
    (run_dir / "results.json").write_text(json.dumps({"final_accuracy": 0.25}))
    (run_dir / "run.flags").write_text("--dataset=synthetic\n--batch_size=16\n--seed=0\n")
    unfinished = tmp_path / "runs" / "resnet8" / "kd" / "seed0"
    unfinished.mkdir(parents=True)
    (unfinished / "run.flags").write_text("--dataset=synthetic\n")
    markdown = tmp_path / "benchmarks.md"
    markdown.write_text("# Benchmarks\n\n## Accuracy\n\n<!-- accuracy -->x<!-- /accuracy -->\n")
    figure = tmp_path / "deploy_latency.png"
    command = [sys.executable, DEPLOY_SCRIPT, "--dataset=synthetic",
               f"--runs_dir={tmp_path / 'runs'}", f"--teacher={teacher}",
               "--formats=saved_model,tflite_int8", "--threads=1,2", "--rounds=4",
               "--warmup=1", "--blocks=2", "--calibration_batches=1",
               f"--results_dir={tmp_path}", f"--figure={figure}", f"--output={markdown}"]
    subprocess.run(command, check=True, capture_output=True, timeout=600,  # a hang guard
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})

    (results,) = tmp_path.glob("deploy-*.json")
    run = json.loads(results.read_text())
    assert [m["name"] for m in run["models"]] == ["teacher teacher.keras", "resnet8 none"]
    assert [s["model_dir"].split(os.sep)[-2] for s in run["skipped"]] == ["kd"]
    assert run["test_examples"] == 64  # the synthetic validation split, all of it
    for model in run["models"]:
        assert model["parameters"] == kerakd.models.get("resnet8", 4, (16, 16, 3)).count_params()
        assert set(model["formats"]) == {"saved_model", "tflite_int8"}
        saved = model["formats"]["saved_model"]
        # The float SavedModel reproduces the Keras model on every test image.
        assert saved["top1_agreement"] == 1.0 and saved["max_abs_logit_diff"] < 1e-4
        assert saved["accuracy"] == pytest.approx(model["keras_accuracy"])
        assert 0 < model["formats"]["tflite_int8"]["size_bytes"] < saved["size_bytes"]
        assert set(model["latency"]) == {"saved_model@default", "tflite_int8@1",
                                         "tflite_int8@2"}
        for warm in model["latency"].values():
            for stats in (warm, warm["cold"]):
                assert stats["rounds"] == 4 and len(stats["block_medians_ms"]) == 2
                assert 0 < stats["q25_ms"] <= stats["median_ms"] <= stats["q75_ms"]
    text = markdown.read_text()
    assert "<!-- accuracy -->x<!-- /accuracy -->" in text  # the other block is kept
    assert "## Deployment" in text and "<!-- deploy -->" in text
    assert "TFLite int8" in text and figure.name in text
    assert figure.stat().st_size > 0
