"""DIST (docs/methods/dist.md) against a float64 NumPy re-implementation of the
authors' relations, its gradients, its per-replica intra-class term, configs and CLI."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd
from kerakd import flags as kerakd_flags
from kerakd import train
from kerakd.methods.base import StepData, TapSpec
from kerakd.methods.dist import dist_losses, pearson_correlation

from reference import make_dataset
from reference import np_ce, np_softmax

B, K, TAU = 4, 5, 4.0
HERE = os.path.dirname(__file__)
CONFIGS = os.path.join(HERE, os.pardir, "configs")


def logits(*shape, seed=0, scale=3.0):
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype("float32")


# -- NumPy reference (float64) ----------------------------------------------


def np_rho(a, b):
    """Pearson's correlation of each ROW of a and b, eps on the product of norms."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)


def np_dist(z_s, z_t, tau=TAU):
    y_s, y_t = np_softmax(z_s.astype("float64") / tau), np_softmax(z_t.astype("float64") / tau)
    inter = tau**2 * (1 - np_rho(y_s, y_t).mean())
    intra = tau**2 * (1 - np_rho(y_s.T, y_t.T).mean())
    return inter, intra


def np_objective(z_s, z_t, y, ce_weight=1.0, kd_weight=2.0, inter_weight=1.0, intra_weight=1.0,
                 tau=TAU):
    inter, intra = np_dist(z_s, z_t, tau)
    return ce_weight * np_ce(z_s, y) + kd_weight * (inter_weight * inter + intra_weight * intra)


def built(method, batch=B):
    method.build(TapSpec(student={}, teacher={}, student_logits=(batch, K),
                         teacher_logits=(batch, K), image_shape=(batch, 16, 16, 3)))
    return method


def step(z_s, z_t, labels):
    return StepData(images=None, labels=labels, student={}, student_logits=z_s,
                    teacher={}, teacher_logits=z_t, training=True)


def labels_for(batch=B):
    return (np.arange(batch) % K).astype("int32")


def total(method, out):
    return sum(float(method.term_weights[n]) * float(v) for n, v in out.losses.items())


# -- the Pearson relation ---------------------------------------------------

def test_pearson_is_invariant_to_a_positive_affine_map_and_matches_numpy():
    a, b = logits(3, 7, seed=1).astype("float64"), logits(3, 7, seed=2).astype("float64")
    rho = keras.ops.convert_to_numpy(pearson_correlation(a, b))
    np.testing.assert_allclose(rho, np_rho(a, b), rtol=1e-5)
    np.testing.assert_allclose(pearson_correlation(2 * a + 3, b), rho, rtol=1e-5)
    np.testing.assert_allclose(pearson_correlation(a, 0.5 * b - 1), rho, rtol=1e-5)
    # A negative scale flips the sign: the invariance is to positive maps only.
    np.testing.assert_allclose(pearson_correlation(-a, b), -rho, rtol=1e-5)
    assert np.all(np.abs(rho) < 0.999)  # the inputs are not already correlated


def test_pearson_axis_zero_correlates_columns():
    a, b = logits(6, 3, seed=3), logits(6, 3, seed=4)
    np.testing.assert_allclose(pearson_correlation(a, b, axis=0),
                               np_rho(a.T.astype("float64"), b.T.astype("float64")), rtol=1e-5)


def test_pearson_epsilon_is_added_to_the_product_of_norms():
    # Norms 1e-4 each: the product 1e-8 equals epsilon, so rho halves (1 -> 0.5);
    # epsilon inside each norm, or under a square root, would give another value.
    a = np.array([[1e-4, -1e-4]], "float32") / np.sqrt(2)
    np.testing.assert_allclose(pearson_correlation(a, a), [0.5], rtol=1e-4)


# -- the loss terms against NumPy --------------------------------------------

def test_terms_match_numpy_at_b4_k5_tau4():
    z_s, z_t, y = logits(B, K, seed=1), logits(B, K, seed=2), labels_for()
    method = built(kerakd.methods.get("dist"))
    out = method(data=step(z_s, z_t, y))
    inter, intra = np_dist(z_s, z_t)
    np.testing.assert_allclose(out.losses["inter"], inter, rtol=1e-5)
    np.testing.assert_allclose(out.losses["intra"], intra, rtol=1e-5)
    np.testing.assert_allclose(out.losses["ce"], np_ce(z_s, y), rtol=1e-5)
    assert method.term_weights == {"ce": 1.0, "inter": 2.0, "intra": 2.0}
    np.testing.assert_allclose(total(method, out), np_objective(z_s, z_t, y), rtol=1e-5)
    # The agreement score is the mean row correlation, 1 - inter / tau^2.
    np.testing.assert_allclose(out.metrics["row_correlation"], 1 - inter / TAU**2, rtol=1e-5)
    assert inter > 0.1 and intra > 0.1  # far from zero, so the comparison means something


def test_each_weight_scales_its_own_term():
    z_s, z_t, y = logits(B, K, seed=5), logits(B, K, seed=6), labels_for()
    hparams = dict(ce_weight=0.5, kd_weight=3.0, inter_weight=0.25, intra_weight=2.0,
                   temperature=2.0)
    method = built(kerakd.methods.get("dist", **hparams))
    out = method(data=step(z_s, z_t, y))
    assert method.term_weights == {"ce": 0.5, "inter": 0.75, "intra": 6.0}
    inter, intra = np_dist(z_s, z_t, tau=2.0)
    np.testing.assert_allclose([out.losses["inter"], out.losses["intra"]], [inter, intra],
                               rtol=1e-5)
    expected = np_objective(z_s, z_t, y, 0.5, 3.0, 0.25, 2.0, tau=2.0)
    np.testing.assert_allclose(total(method, out), expected, rtol=1e-5)


def test_equal_distributions_give_zero_and_others_do_not():
    z_t, y = logits(B, K, seed=7), labels_for()
    method = built(kerakd.methods.get("dist"))
    # A per-row shift of the logits leaves softmax, so Y_s = Y_t: zero up to epsilon.
    shifted = z_t + np.arange(B, dtype="float32")[:, None]
    for z_s in (z_t, shifted):
        out = method(data=step(z_s, z_t, y))
        assert float(out.losses["inter"]) < 1e-4 and float(out.losses["intra"]) < 1e-4
    # Scaling the logits changes the probabilities non-affinely: both terms positive.
    out = method(data=step(2 * z_t, z_t, y))
    inter, intra = np_dist(2 * z_t, z_t)
    assert inter > 1e-2 and intra > 1e-2
    np.testing.assert_allclose([out.losses["inter"], out.losses["intra"]], [inter, intra],
                               rtol=1e-4)


def test_intra_is_inter_on_the_transposed_probability_matrices():
    z_s, z_t = logits(6, K, seed=8), logits(6, K, seed=9)
    y_s, y_t = np_softmax(z_s / TAU), np_softmax(z_t / TAU)
    _, intra, _ = dist_losses(z_s, z_t, TAU)
    # Rows of the transposes are the classes: the row relation of those.
    inter_of_transposes = TAU**2 * (1 - np.mean(keras.ops.convert_to_numpy(
        pearson_correlation(y_s.T, y_t.T, axis=-1))))
    np.testing.assert_allclose(intra, inter_of_transposes, rtol=1e-5)


def test_one_example_batches_give_a_constant_intra_with_finite_gradients():
    # A column of one example has zero spread: rho = 0, intra = tau^2, no NaN.
    z_s, z_t = tf.constant(logits(1, K, seed=10)), logits(1, K, seed=11)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z_s)
        inter, intra, _ = dist_losses(z_s, z_t, TAU)
    np.testing.assert_allclose(intra, TAU**2, rtol=1e-6)
    np.testing.assert_array_equal(tape.gradient(intra, z_s), np.zeros((1, K)))
    assert np.all(np.isfinite(tape.gradient(inter, z_s)))
    # So does a uniform teacher (constant rows and columns): both relations are tau^2.
    z_s, z_t = tf.constant(logits(B, K, seed=12)), np.zeros((B, K), "float32")
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z_s)
        inter, intra, _ = dist_losses(z_s, z_t, TAU)
    np.testing.assert_allclose([inter, intra], [TAU**2, TAU**2], rtol=1e-6)
    for term in (inter, intra):
        np.testing.assert_array_equal(tape.gradient(term, z_s), np.zeros((B, K)))


# -- gradients --------------------------------------------------------------

def test_student_gradient_matches_numpy_and_the_teacher_gets_none():
    z_s, z_t, y = logits(B, K, seed=14), logits(B, K, seed=15), labels_for()
    method = built(kerakd.methods.get("dist", inter_weight=1.0, intra_weight=3.0))
    student, teacher = tf.constant(z_s), tf.constant(z_t)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([student, teacher])
        out = method(data=step(student, teacher, y))
        objective = sum(method.term_weights[n] * v for n, v in out.losses.items())
    got = keras.ops.convert_to_numpy(tape.gradient(objective, student))
    # Central differences of the float64 reference: every row and column of
    # Y_s carries gradient, through both relations and the cross-entropy.
    expected = np.zeros((B, K))
    h = 1e-5
    for index in np.ndindex(B, K):
        up, down = z_s.astype("float64"), z_s.astype("float64")
        up[index] += h
        down[index] -= h
        expected[index] = (np_objective(up, z_t, y, intra_weight=3.0)
                           - np_objective(down, z_t, y, intra_weight=3.0)) / (2 * h)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
    for term in ("inter", "intra"):
        g = tape.gradient(out.losses[term], student)
        assert float(np.max(np.abs(g))) > 1e-3, term
    g = tape.gradient(objective, teacher)
    assert g is None or not np.any(g)


# -- batch coupling (per replica) --------------------------------------------

def test_intra_depends_on_the_batch_split_and_inter_does_not():
    """Why the reduction matters: the intra term of 2B examples is not the
    mean of its halves' values (it couples the examples of a batch), the
    per-example inter term is. Under 2 replicas each replica computes its
    half's value and the Distiller reports and optimizes their mean
    (test_two_replicas_report_the_mean_of_the_per_replica_intra)."""
    z_s, z_t = logits(2 * B, K, seed=16), logits(2 * B, K, seed=17)
    whole = dist_losses(z_s, z_t, TAU)
    halves = [dist_losses(z_s[p], z_t[p], TAU) for p in (slice(0, B), slice(B, 2 * B))]
    np.testing.assert_allclose(whole[0], (halves[0][0] + halves[1][0]) / 2, rtol=1e-5)
    mean_of_halves = (float(halves[0][1]) + float(halves[1][1])) / 2
    assert abs(float(whole[1]) - mean_of_halves) > 0.1, (float(whole[1]), mean_of_halves)
    np.testing.assert_allclose(mean_of_halves, np.mean(
        [np_dist(z_s[p], z_t[p])[1] for p in (slice(0, B), slice(B, 2 * B))]), rtol=1e-5)


TWO_REPLICAS = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np, kerakd

HALF, CLASSES, SHAPE = 4, 5, (16, 16, 3)
rng = np.random.default_rng(0)
images = rng.normal(size=(2 * HALF, *SHAPE)).astype("float32")
labels = rng.integers(0, CLASSES, 2 * HALF).astype("int32")
keras.utils.set_random_seed(1)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    student = kerakd.models.get("resnet8", CLASSES, SHAPE)
    teacher = kerakd.models.get("wrn_16_1", CLASSES, SHAPE)
    distiller = kerakd.Distiller(student, "dist", teacher)
    distiller.build((HALF, *SHAPE))
    distiller.compile(keras.optimizers.SGD(0.0))
s_weights, t_weights = student.get_weights(), teacher.get_weights()
ds = tf.data.Dataset.from_tensors((images, labels))
logs = {k: float(v[0]) for k, v in distiller.fit(ds, epochs=1, verbose=0).history.items()}
# The same networks on one device, each replica's half as that replica runs it
# (student in training mode: per-half BatchNorm statistics).
plain_student = kerakd.models.get("resnet8", CLASSES, SHAPE)
plain_teacher = kerakd.models.get("wrn_16_1", CLASSES, SHAPE)
plain_student.set_weights(s_weights)
plain_teacher.set_weights(t_weights)
halves = [{"student": plain_student(images[p], training=True).numpy().tolist(),
           "teacher": plain_teacher(images[p], training=False).numpy().tolist(),
           "labels": labels[p].tolist()}
          for p in (slice(0, HALF), slice(HALF, 2 * HALF))]
with open(sys.argv[1], "w") as f:
    json.dump({"logs": logs, "halves": halves,
               "replicas": strategy.num_replicas_in_sync}, f)
"""


@pytest.mark.slow
def test_two_replicas_report_the_mean_of_the_per_replica_intra(tmp_path):
    """Under a 2-replica MirroredStrategy the reported intra term is the mean
    of the two replicas' values on their own halves, not the value on the
    global batch of 2B. (tests/test_distribution.py checks the same for the
    losses and the updated weights, against a one-device half-step reference.)"""
    out = tmp_path / "two_replicas.json"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(TWO_REPLICAS), str(out)],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(out.read_text())
    assert found["replicas"] == 2
    logs, halves = found["logs"], found["halves"]
    per_half = [np_dist(np.array(h["student"]), np.array(h["teacher"])) for h in halves]
    inter_mean = np.mean([p[0] for p in per_half])
    intra_mean = np.mean([p[1] for p in per_half])
    whole_intra = np_dist(np.concatenate([h["student"] for h in halves]),
                          np.concatenate([h["teacher"] for h in halves]))[1]
    np.testing.assert_allclose(logs["intra"], intra_mean, rtol=1e-4)
    np.testing.assert_allclose(logs["inter"], inter_mean, rtol=1e-4)
    # The check can tell the two reductions apart on this batch.
    assert abs(whole_intra - intra_mean) > 100 * 1e-4 * intra_mean, (whole_intra, intra_mean)
    ce_mean = np.mean([np_ce(np.array(h["student"]), np.array(h["labels"])) for h in halves])
    np.testing.assert_allclose(logs["loss"], ce_mean + 2 * inter_mean + 2 * intra_mean,
                               rtol=1e-4)


# -- through the Distiller ----------------------------------------------------

def test_distiller_reports_the_terms_and_the_agreement_score(student, teacher):
    images, labels = make_dataset(n=8).get_single_element()
    # The step's logits: student in training mode (batch statistics), teacher in inference.
    z_s = keras.ops.convert_to_numpy(student(images, training=True))
    z_t = keras.ops.convert_to_numpy(teacher(images, training=False))
    distiller = kerakd.Distiller(student, "dist", teacher)
    distiller.compile(keras.optimizers.SGD(0.0))  # one step, nothing moves
    logs = {k: v[0] for k, v in distiller.fit(make_dataset(n=8), epochs=1, verbose=0)
            .history.items()}
    inter, intra = np_dist(z_s, z_t)
    np.testing.assert_allclose([logs["inter"], logs["intra"]], [inter, intra], rtol=1e-4)
    np.testing.assert_allclose(logs["row_correlation"], 1 - inter / TAU**2, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], np_objective(z_s, z_t, labels.numpy()), rtol=1e-4)


def test_terms_are_float32_under_mixed_precision():
    z_s, z_t = logits(B, K, seed=18).astype("float16"), logits(B, K, seed=19).astype("float16")
    out = built(kerakd.methods.get("dist"))(data=step(z_s, z_t, labels_for()))
    assert all(v.dtype == "float32" for v in (*out.losses.values(), *out.metrics.values()))
    inter, intra = np_dist(z_s, z_t)
    np.testing.assert_allclose([out.losses["inter"], out.losses["intra"]], [inter, intra],
                               rtol=1e-5)


@pytest.mark.parametrize("hparams, message", [
    ({"temperature": 0.0}, "`temperature` must be > 0, got 0.0"),
    ({"inter_weight": -1.0}, "`inter_weight` must be >= 0, got -1.0"),
    ({"intra_weight": -0.5}, "`intra_weight` must be >= 0, got -0.5"),
    ({"kd_weight": -2.0}, "`kd_weight` must be >= 0"),
    ({"ce_weight": -1.0}, "`ce_weight` must be >= 0"),
])
def test_bad_hyperparameters_name_the_argument(hparams, message):
    with pytest.raises(ValueError, match=message):
        kerakd.methods.get("dist", **hparams)


def test_config_keeps_every_argument():
    hparams = dict(ce_weight=0.5, kd_weight=3.0, inter_weight=0.25, intra_weight=2.0,
                   temperature=1.0)
    method = kerakd.methods.get("dist", **hparams)
    config = method.get_config()
    assert {k: config[k] for k in hparams} == hparams
    again = type(method).from_config(config)
    assert again.term_weights == method.term_weights == {"ce": 0.5, "inter": 0.75, "intra": 6.0}


# -- configs and the command line --------------------------------------------

def test_cifar100_config_follows_the_authors_recipe():
    fv = kerakd_flags.parse(["kerakd-train", f"--flagfile={os.path.join(CONFIGS, 'dist.flags')}"])
    kerakd_flags.check_flags(fv)
    assert (fv.method, fv.dataset, fv.student, fv.teacher) == (
        "dist", "cifar100", "resnet8x4", "teachers/resnet32x4_cifar100.keras")
    assert (fv.epochs, fv.batch_size, fv.optimizer, fv.learning_rate, fv.momentum) == (
        240, 64, "sgd", 0.05, 0.9)
    assert not fv.nesterov and fv.weight_decay == 5e-4 and fv.augment == "standard"
    assert (kerakd_flags.lr_milestones(fv), fv.lr_decay) == ([150, 180, 210], 0.1)
    assert (fv.dist_ce_weight, fv.dist_kd_weight, fv.dist_inter_weight, fv.dist_intra_weight,
            fv.dist_temperature) == (1.0, 2.0, 1.0, 1.0, 4.0)


def test_fmnist_config_reads_the_fmnist_teacher():
    teacher = kerakd_flags.parse(
        ["kerakd-train", f"--flagfile={os.path.join(CONFIGS, 'fmnist', 'teacher.flags')}"])
    fv = kerakd_flags.parse(
        ["kerakd-train", f"--flagfile={os.path.join(CONFIGS, 'fmnist', 'dist.flags')}"])
    kerakd_flags.check_flags(fv)
    assert fv.method == "dist" and fv.dataset == teacher.dataset == "fashion_mnist"
    assert fv.teacher == os.path.join(teacher.model_dir, "student.keras")


TINY = ["--dataset=synthetic", "--student=resnet8", "--batch_size=16",
        "--steps_per_epoch=2", "--lr_milestones=1", "--epochs=2"]


@pytest.mark.slow
def test_cli_run_end_to_end(tmp_path):
    teacher_path = str(tmp_path / "teacher.keras")
    kerakd.models.get("resnet8", 4, (16, 16, 3)).save(teacher_path)  # synthetic: 4 classes
    model_dir = tmp_path / "run"
    results = train.run_with_args(["--method=dist", f"--teacher={teacher_path}",
                                   "--dist_temperature=2", "--dist_intra_weight=0.5", *TINY,
                                   f"--model_dir={model_dir}"])
    assert (model_dir / "student.keras").exists()
    assert results["flags"]["dist_temperature"] == 2.0 and results["flags"]["dist_intra_weight"] == 0.5
    final = results["final_metrics"]
    for name in ("loss", "ce", "inter", "intra", "row_correlation"):
        assert np.isfinite(final[name]), name
    assert 0 <= final["inter"] <= 2 * 2.0**2 and -1 <= final["row_correlation"] <= 1
