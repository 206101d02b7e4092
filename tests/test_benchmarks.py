"""The benchmark scripts: smoke runs of `benchmarks/throughput.py` and
`benchmarks/deploy.py` (tiny settings: they prove the scripts work, not their
speed), the markdown block writer they share, and the PyTorch anchor's
reference models."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmarks")
SCRIPT = os.path.join(BENCHMARKS, "throughput.py")
HAS_TORCH = importlib.util.find_spec("torch") is not None


def load_benchmark_module(name):
    """benchmarks/<name>.py as a module (benchmarks/ is no package: its
    scripts import each other as top-level modules)."""
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    return importlib.import_module(name)


# -- the markdown block writer ---------------------------------------------


def block(key, body):
    return f"<!-- b:{key} -->\n{body}\n<!-- /b:{key} -->"


def pattern(key):
    return re.compile(rf"<!-- b:{key} -->.*?<!-- /b:{key} -->", re.S)


def test_replace_block_creates_appends_into_its_section_and_replaces(tmp_path):
    replace_block = load_benchmark_module("markdown_block").replace_block
    path = tmp_path / "benchmarks.md"
    replace_block(path, pattern("one"), "Throughput", block("one", "1"))
    assert path.read_text() == f"# Benchmarks\n\n## Throughput\n\n{block('one', '1')}\n"

    # A second block goes at the end of its section, before the next one.
    path.write_text(path.read_text() + "\n## Accuracy\n\ntext\n")
    replace_block(path, pattern("two"), "Throughput", block("two", "2"))
    assert path.read_text() == (f"# Benchmarks\n\n## Throughput\n\n{block('one', '1')}\n\n"
                                f"{block('two', '2')}\n\n## Accuracy\n\ntext\n")

    # A block that is there is replaced in place; the text around it stays.
    replace_block(path, pattern("one"), "Throughput", block("one", "new\nlines"))
    assert path.read_text() == (f"# Benchmarks\n\n## Throughput\n\n"
                                f"{block('one', 'new' + chr(10) + 'lines')}\n\n"
                                f"{block('two', '2')}\n\n## Accuracy\n\ntext\n")

    # A section that is not there is appended, once.
    replace_block(path, pattern("d"), "Deployment", block("d", "x"))
    replace_block(path, pattern("d"), "Deployment", block("d", "y"))
    text = path.read_text()
    assert text.endswith(f"## Accuracy\n\ntext\n\n## Deployment\n\n{block('d', 'y')}\n")
    assert text.count("## Deployment") == 1 and text.count("<!-- b:one -->") == 1


# -- the PyTorch anchor ----------------------------------------------------


def test_kerakd_does_not_import_torch():
    # kerakd/torch_reference.py imports torch; no kerakd module may import it.
    code = ("import sys, kerakd, kerakd.models, kerakd.methods, kerakd.train; "
            "assert 'torch' not in sys.modules, 'kerakd imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.skipif(not HAS_TORCH, reason="the torch extra is not installed")
@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2", "resnet18_cifar"])
def test_anchor_models_have_the_zoo_models_parameters(name):
    """The PyTorch anchor times the same network: as many trainable
    parameters, and as many BatchNorm statistics, as the zoo's model."""
    import kerakd
    from kerakd import torch_reference

    model = kerakd.models.get(name, 100, (32, 32, 3))
    net = torch_reference.build(name, 100, 32)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    statistics = sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == trainable
    assert sum(b.numel() for n, b in net.named_buffers()
               if n.endswith(("running_mean", "running_var"))) == statistics


def test_anchor_block_without_torch_says_so():
    throughput = load_benchmark_module("throughput")
    anchor = {"batch_size": 64, "image_shape": (32, 32, 3), "num_classes": 100,
              "torch": None, "reason": "torch is not installed (No module named 'torch')",
              "models": {"resnet8x4": {"kerakd_s": 0.8, "kerakd_params": 1233540}}}
    run = {"command": "python benchmarks/throughput.py", "date": "2026-12-01T00:00:00",
           "settings": {"steps": 20, "warmup": 5},
           "machine": {"cpu_cores": 2, "processor": "x86_64", "gpu": None,
                       "tensorflow": "2.21.0", "keras": "3.15.1",
                       "load_average_1m": 1.0, "load_average_1m_end": 1.0}}
    text = throughput.anchor_markdown(anchor, run)
    assert "No PyTorch columns: torch is not installed" in text
    assert "| resnet8x4 | 1,233,540 | no torch | no torch | 800.0 | no torch |" in text
    assert "Targets" not in text


# -- convolution backward (benchmarks/conv_backward.py) ----------------------


@pytest.mark.parametrize("kernel,size", [(1, 4), (3, 4), (3, 8)])
def test_im2col_convolution_gives_conv2d_values_and_gradients(kernel, size):
    """The matmul formulation the convolution benchmark measures against
    `tf.nn.conv2d`: the same outputs and input/kernel gradients, to float32
    tolerance (SAME padding, stride 1)."""
    import tensorflow as tf

    conv_backward = load_benchmark_module("conv_backward")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, size, size, 24), np.float32)
    w = rng.standard_normal((kernel, kernel, 24, 40), np.float32)
    dy = rng.standard_normal((3, size, size, 40), np.float32)
    np.testing.assert_allclose(conv_backward.im2col_conv(tf, x, w),
                               tf.nn.conv2d(x, w, 1, "SAME"), rtol=1e-5, atol=1e-4)
    _, conv = conv_backward.tf_step(tf, {}, x, w, dy)
    _, im2col = conv_backward.tf_step(tf, {"impl": "matmul"}, x, w, dy)
    for expected, actual in zip(conv(), im2col()):
        assert expected.shape == actual.shape
        np.testing.assert_allclose(actual, expected, rtol=1e-5,
                                   atol=1e-5 * np.abs(expected).max())


# -- smoke runs ------------------------------------------------------------


@pytest.mark.slow
def test_throughput_writes_results_and_markdown(tmp_path):
    markdown = tmp_path / "benchmarks.md"
    subprocess.run(
        [sys.executable, SCRIPT, "--pairs=fmnist", "--methods=kd", "--steps=2",
         "--warmup=1", "--noflops", "--anchor_models=resnet8", "--anchor_batch_size=4",
         f"--output={markdown}", f"--results_dir={tmp_path}"],
        check=True, capture_output=True, timeout=600,  # a hang guard, not a speed test
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )

    (results,) = tmp_path.glob("throughput-fmnist-pytorch-*.json")
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
    anchor = run["anchor"]
    (resnet8,) = anchor["models"].values()
    assert anchor["batch_size"] == 4 and resnet8["kerakd_s"] > 0
    text = markdown.read_text()
    assert "## Throughput" in text and "<!-- throughput:fmnist -->" in text
    assert "<!-- throughput:pytorch -->" in text
    if HAS_TORCH:
        assert resnet8["torch_params"] == resnet8["kerakd_params"] > 0
        assert resnet8["kerakd_over_torch"] == pytest.approx(
            resnet8["kerakd_s"] / resnet8["torch_s"])
        assert "| resnet8 |" in text and "kerakd / PyTorch" in text
    else:
        assert "no torch" in text


DEPLOY_SCRIPT = os.path.join(BENCHMARKS, "deploy.py")


@pytest.mark.slow
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
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600,  # a hang guard
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert completed.returncode == 0, completed.stderr[-3000:]

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


def _diagnostic(tmp_path, script, *args):
    """`benchmarks/<script>` on the synthetic dataset with an untrained
    teacher of its shape; its stdout."""
    import keras

    import kerakd

    teacher = tmp_path / "teacher.keras"
    if not teacher.exists():
        keras.utils.set_random_seed(0)
        kerakd.models.get("resnet8", 4, (16, 16, 3)).save(teacher)
    completed = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, script), "--dataset=synthetic",
         f"--teacher={teacher}", *args],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


@pytest.mark.slow
def test_term_gradients_prints_every_term_of_the_method(tmp_path):
    out = _diagnostic(tmp_path, "term_gradients.py", "--method=mlkd", "--batch_size=8",
                      "--flag=cc_weight=0.5")
    lines = {line.split()[2]: line for line in out.splitlines() if line.startswith("mlkd B=8")}
    assert sorted(lines) == ["bc", "cc", "ce", "ce_strong", "kd"]
    norms = {name: float(line.split()[-1]) for name, line in lines.items()}
    assert all(np.isfinite(v) and v > 0 for v in norms.values()), norms


@pytest.mark.slow
def test_soft_targets_reports_each_temperature(tmp_path):
    out = _diagnostic(tmp_path, "soft_targets.py", "--examples=32", "--targets=raw:4,ls:2")
    assert "4 classes" in out and "bound (K - 1) / sqrt(K) = 1.500" in out
    top = [float(re.search(r"mean top probability ([0-9.]+)", line).group(1))
           for line in out.splitlines() if "mean top probability" in line]
    assert len(top) == 2 and all(0.25 <= p <= 1 for p in top)  # at least uniform over 4
