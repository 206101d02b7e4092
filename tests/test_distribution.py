"""Distribution is correct, not only running (docs/methods/conventions.md).

For every registered method (and a composition), one MirroredStrategy step on
2 logical CPU devices with global batch 2B gives the same losses and the same
updated weights as one device that runs the step on each half separately and
averages losses and gradients. A Keras distiller that forgets to scale its
loss by the replica count fails here with exactly 2x the update.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import kerakd
from reference import IMAGE_SHAPE, NUM_CLASSES, make_dataset

# Subprocesses of minutes: skipped by the quick command (README, "Set up").
pytestmark = pytest.mark.slow

HERE = os.path.dirname(__file__)
METHODS = kerakd.methods.available() + ["fitnet+at"]
CHECKS = METHODS + ["sync_batchnorm", "clip_grad_norm", "replica_batchnorm"]


@pytest.fixture(scope="module")
def multi_replica_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored") / "results.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "multi_replica_step.py"), str(out), *CHECKS],
        capture_output=True, text=True, env=env, timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        return json.load(f)


@pytest.mark.parametrize("method", METHODS)
def test_mirrored_step_equals_average_of_half_steps(multi_replica_results, method):
    result = multi_replica_results[method]
    assert "error" not in result, result.get("error")
    assert result["moved"] > 1e-3, "the step must change the weights for the check to mean anything"
    # float32 rounding grows with the size of the update (SemCKD's beta 400
    # moves some weights by ~100 in this one step).
    assert result["relative_weight_diff"] < 1e-5, result
    assert max(result["loss_diff"].values()) < 1e-5, result["loss_diff"]


def test_synchronized_batchnorm_steps_as_one_device_on_the_global_batch(multi_replica_results):
    result = multi_replica_results["sync_batchnorm"]
    assert "error" not in result, result.get("error")
    assert result["moved"] > 1e-3
    assert result["relative_weight_diff"] < 1e-5, result
    assert max(result["loss_diff"].values()) < 1e-5, result["loss_diff"]


def test_replicas_hold_one_copy_of_the_batchnorm_statistics(multi_replica_results):
    result = multi_replica_results["replica_batchnorm"]
    assert "error" not in result, result.get("error")
    assert result["statistics"] > 10
    # Per-replica batch statistics alone made the copies differ by ~1e-2.
    assert result["spread"] < 1e-6, result
    assert result["prediction_diff"] < 1e-5, result


def test_gradient_clipping_reads_the_global_batch(multi_replica_results):
    result = multi_replica_results["clip_grad_norm"]
    assert "error" not in result, result.get("error")
    assert result["norm"] > 2 * 0.05, "the clipping must act for the check to mean anything"
    assert result["moved"] > 1e-4
    # 1e-3 of the step: the clipped step is small, and float32 rounding of the
    # weights (~1e-7 of |w| ~ 1) is compared against it.
    assert result["weight_diff"] < 1e-3 * result["moved"] + 1e-6, result


def free_ports(n):
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_localhost_complete_a_fit_in_lockstep():
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config))
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "multi_worker_fit.py")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        ))
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    chief, other = outputs
    assert chief["steps"] == other["steps"] == 8  # 4 global batches x 2 epochs
    assert all(np.isfinite(chief["loss"]))
    # Synchronous training: both workers hold the same weights.
    np.testing.assert_allclose(chief["checksum"], other["checksum"], rtol=1e-6)
    np.testing.assert_allclose(chief["moving_checksum"], other["moving_checksum"], rtol=1e-6)


def built_for_fit(distiller, batch_size=8):
    """`distiller` with what its first fit would build inside the traced step
    built now (the method, the metrics, the optimizer's slots): variables
    created while tracing make tf.function trace the step a second time."""
    distiller.build((batch_size, *IMAGE_SHAPE))
    distiller.optimizer.build(distiller.trainable_variables)
    return distiller


@pytest.fixture
def bfloat16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("method", ["kd", "fitnet"])
def test_mixed_precision_trains_with_float32_losses(bfloat16_policy, method):
    student = kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
    teacher = kerakd.models.get("wrn_16_1", NUM_CLASSES, IMAGE_SHAPE)
    assert student.layers[1].compute_dtype == "bfloat16"
    distiller = kerakd.Distiller(student, method, teacher)
    distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    logs = built_for_fit(distiller).fit(make_dataset(), epochs=1, verbose=0).history
    assert all(np.isfinite(v[0]) for v in logs.values())
    images, labels = make_dataset().take(1).get_single_element()
    losses = distiller.compute_losses(images, labels, training=True)
    assert all(v.dtype == "float32" for v in losses.values())
    # Variables stay float32 (the optimizer updates full-precision weights).
    assert all(v.dtype == "float32" for v in student.trainable_variables)


def test_synchronize_batchnorm_keeps_weights_and_outputs(tmp_path):
    from kerakd.distribute import synchronize_batchnorm

    model = kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
    synced = synchronize_batchnorm(model)
    norms = [l for l in synced.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert norms and all(l.synchronized for l in norms)
    images = make_dataset().take(1).get_single_element()[0]
    np.testing.assert_allclose(synced(images, training=False), model(images, training=False), rtol=1e-5)
    # Distills, and saves as a plain Keras model.
    distiller = kerakd.Distiller(synced, "kd", kerakd.models.get("wrn_16_1", NUM_CLASSES, IMAGE_SHAPE))
    distiller.compile(keras.optimizers.SGD(0.05))
    logs = built_for_fit(distiller).fit(make_dataset(), epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0])
    synced.save(tmp_path / "synced.keras")
    assert keras.models.load_model(tmp_path / "synced.keras").count_params() == model.count_params()


def test_cli_mirrored_run_with_synchronized_batchnorm(tmp_path):
    model_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "kerakd.train", "--dataset=synthetic", "--method=none",
         "--student=resnet8", "--batch_size=16", "--steps_per_epoch=2", "--epochs=1",
         "--lr_milestones=", "--strategy=mirrored", "--num_logical_cpus=2",
         "--sync_batchnorm", f"--model_dir={model_dir}"],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((model_dir / "results.json").read_text())
    assert results["flags"]["strategy"] == "mirrored" and results["flags"]["sync_batchnorm"]
    assert np.isfinite(results["final_metrics"]["loss"])
    student = keras.models.load_model(model_dir / "student.keras")
    norms = [l for l in student.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert norms and all(l.synchronized for l in norms)
