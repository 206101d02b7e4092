"""One training step on 2 logical CPU devices vs. two single-device half steps.

Run as a script (the CPU must be split before TensorFlow initialises):
`python tests/multi_replica_step.py OUT.json [METHOD ...]`. For each method it
writes the largest differences between

- the MirroredStrategy step on a global batch of 2B, and
- one device running the same step on each half of B separately, averaging
  the losses and the gradients, then applying them (plain SGD, weight decay on).

docs/methods/conventions.md: per-example terms average over the global batch, batch-coupled
terms are per replica divided by the replica count, BatchNorm statistics are
per replica (DDP without SyncBN).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kerakd  # noqa: E402
from kerakd.distribute import synchronize_batchnorm  # noqa: E402
from kerakd.gradients import l2_penalty  # noqa: E402

NUM_CLASSES, SHAPE, HALF = 5, (16, 16, 3), 8
LEARNING_RATE, WEIGHT_DECAY = 0.1, 5e-4

# Hyperparameters a method cannot run without here.
REQUIRED = {"crd": {"num_data": 2 * HALF}}
# Method state to start from. CRD fixes its normaliser Z on its first step
# from the GLOBAL batch (gathered across replicas), which no single device
# running half a batch can reproduce; from the second step on Z is constant.
INITIAL_STATE = {"crd": {"normalizers": [16.0, 16.0]}}


def build(name, hparams, sync_batchnorm=False, clip_grad_norm=0.0):
    keras.utils.set_random_seed(1)
    method = kerakd.methods.get(name, **hparams)
    student = kerakd.models.get("resnet8", NUM_CLASSES, SHAPE)
    if sync_batchnorm:
        student = synchronize_batchnorm(student)
    # The teacher: another resnet8 (the stage shapes of a wrn_16_1, 36 layers
    # to trace per replica instead of 52), its weights drawn after the student's.
    teacher = kerakd.models.get("resnet8", NUM_CLASSES, SHAPE) if method.requires_teacher else None
    distiller = kerakd.Distiller(student, method, teacher, weight_decay=WEIGHT_DECAY,
                                 clip_grad_norm=clip_grad_norm)
    distiller.build((HALF, *SHAPE))
    return distiller


def batch(method, images, labels, index):
    x = {"images": images, "index": index} if method.needs_index else images
    if method.needs_strong_view:
        x = {**(x if isinstance(x, dict) else {"images": x}),
             "strong_images": strong_view(images)}
    return x, labels


def strong_view(images):
    """A second view of the batch, for methods with `needs_strong_view`."""
    return np.ascontiguousarray(np.flip(images, axis=2)) * 0.5 + 0.1


# One strategy per process: a second MirroredStrategy reuses the first one's
# collective instance keys, and TensorFlow then mixes up their all-reduces.
STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def mirrored_step(name, hparams, images, labels, index, initial, sync_batchnorm=False,
                  clip_grad_norm=0.0):
    with STRATEGY.scope():
        distiller = build(name, hparams, sync_batchnorm, clip_grad_norm)
        distiller.set_weights(initial)
        distiller.compile(keras.optimizers.SGD(LEARNING_RATE))
    ds = tf.data.Dataset.from_tensors(batch(distiller.method, images, labels, index))
    logs = distiller.fit(ds, epochs=1, verbose=0).history
    return distiller, {k: v[0] for k, v in logs.items()}


def half_steps(distiller, images, labels, index, initial):
    """`distiller` (single-device, built) stepping on each half, from `initial`."""
    distiller.set_weights(initial)
    variables = distiller.trainable_variables
    start = [v.numpy() for v in variables]
    # Both replicas start the step from the same method state (memory banks,
    # queues, random-seed state): so does each half here.
    state = distiller.method.non_trainable_variables
    initial_state = [v.numpy() for v in state]
    gradients, terms = [], []
    for part in (slice(0, HALF), slice(HALF, 2 * HALF)):
        for v, value in zip(state, initial_state):
            v.assign(value)
        with tf.GradientTape() as tape:
            losses = distiller.compute_losses(
                {"images": images[part],
                 "index": index[part] if distiller.method.needs_index else None,
                 "strong_images": (strong_view(images)[part]
                                   if distiller.method.needs_strong_view else None)},
                labels[part], training=True,
            )
            objective = losses["loss"] + l2_penalty(variables, distiller.weight_decay)
        gradients.append([g.numpy() if g is not None else 0.0
                          for g in tape.gradient(objective, variables)])
        terms.append({k: float(v) for k, v in losses.items()})
    updated = [w - LEARNING_RATE * (g1 + g2) / 2
               for w, g1, g2 in zip(start, *gradients)]
    averaged = {k: (terms[0][k] + terms[1][k]) / 2 for k in terms[0]}
    return distiller, updated, averaged


def global_batch(size=2 * HALF, seed=0):
    """Random images and labels: one global batch (two replicas' halves)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(size, *SHAPE)).astype("float32"),
            rng.integers(0, NUM_CLASSES, size).astype("int32"))


def compare(name):
    hparams = REQUIRED.get(name.split("+")[-1], {})
    images, labels = global_batch()
    index = np.arange(2 * HALF, dtype="int64")
    initial_distiller = build(name, hparams)
    for variable in initial_distiller.method.non_trainable_variables:
        value = INITIAL_STATE.get(name, {}).get(variable.name)
        if value is not None:
            variable.assign(value)
    initial = initial_distiller.get_weights()

    mirrored, logs = mirrored_step(name, hparams, images, labels, index, initial)
    # The distiller `initial` came from serves as the reference: one build less.
    reference, updated, averaged = half_steps(initial_distiller, images, labels, index, initial)
    # Both distillers are built identically, so their variables align in order.
    weight_diff = max(
        float(np.max(np.abs(v.numpy() - w)))
        for v, w in zip(mirrored.trainable_variables, updated)
    )
    moved = max(float(np.max(np.abs(w - v.numpy())))
                for v, w in zip(reference.trainable_variables, updated))
    loss_diff = {k: abs(logs[k] - v) / max(1.0, abs(v)) for k, v in averaged.items()}
    return {"weight_diff": weight_diff, "moved": moved,
            "relative_weight_diff": weight_diff / max(1.0, moved), "loss_diff": loss_diff,
            "terms": sorted(averaged)}


def compare_sync_batchnorm():
    """With synchronized BatchNorm, 2 replicas step as one device on the whole batch."""
    images, labels = global_batch()
    single = build("kd", {})  # gives the initial weights, then steps on one device
    initial = single.get_weights()
    mirrored, logs = mirrored_step("kd", {}, images, labels, None, initial, sync_batchnorm=True)
    single.set_weights(initial)
    start = [v.numpy() for v in single.trainable_variables]
    single.compile(keras.optimizers.SGD(LEARNING_RATE))
    single_logs = single.fit(tf.data.Dataset.from_tensors((images, labels)), verbose=0).history
    weight_diff = max(float(np.max(np.abs(a.numpy() - b.numpy())))
                      for a, b in zip(mirrored.trainable_variables, single.trainable_variables))
    moved = max(float(np.max(np.abs(a.numpy() - w)))
                for a, w in zip(single.trainable_variables, start))
    loss_diff = {k: abs(logs[k] - v[0]) / max(1.0, abs(v[0])) for k, v in single_logs.items()}
    return {"weight_diff": weight_diff, "moved": moved,
            "relative_weight_diff": weight_diff / max(1.0, moved), "loss_diff": loss_diff}


CLIP = 0.05  # below the step's gradient norm, so that the clipping acts


def compare_clip_grad_norm():
    """Clipping reads the global batch's loss gradient: the average of the
    halves' gradients, clipped, then weight decay, as PyTorch's
    `clip_grad_norm_` before a DDP optimizer step."""
    images, labels = global_batch()
    reference = build("kd", {})  # gives the initial weights, then the halves' gradients
    initial = reference.get_weights()
    mirrored, logs = mirrored_step("kd", {}, images, labels, None, initial, clip_grad_norm=CLIP)
    reference.set_weights(initial)
    variables = reference.trainable_variables
    start = [v.numpy() for v in variables]
    halves = []
    for part in (slice(0, HALF), slice(HALF, 2 * HALF)):
        with tf.GradientTape() as tape:
            total = reference.compute_losses(images[part], labels[part], training=True)["loss"]
        halves.append([g.numpy() for g in tape.gradient(total, variables)])
    average = [(a + b) / 2 for a, b in zip(*halves)]
    norm = float(np.sqrt(sum(np.sum(g.astype("float64") ** 2) for g in average)))
    factor = min(1.0, CLIP / norm)
    updated = [w - LEARNING_RATE * (g * factor + WEIGHT_DECAY * w) for w, g in zip(start, average)]
    weight_diff = max(float(np.max(np.abs(v.numpy() - w)))
                      for v, w in zip(mirrored.trainable_variables, updated))
    moved = max(float(np.max(np.abs(w - s))) for w, s in zip(updated, start))
    return {"weight_diff": weight_diff, "moved": moved, "norm": norm,
            "relative_weight_diff": weight_diff / max(1.0, moved), "loss_diff": {}}


def compare_replica_batchnorm():
    """After a mirrored fit, every replica holds the same BatchNorm moving
    statistics, and the student under the strategy predicts as the exported
    student does on one device."""
    images, labels = global_batch(8 * HALF, seed=1)
    with STRATEGY.scope():
        distiller = build("fitnet", {})  # BatchNorm in the student and the method
        distiller.compile(keras.optimizers.SGD(LEARNING_RATE))
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2 * HALF, drop_remainder=True)
    distiller.fit(ds, epochs=2, verbose=0)
    statistics = [v for v in (*distiller.student.non_trainable_variables,
                              *distiller.method.non_trainable_variables)
                  if v.name in ("moving_mean", "moving_variance")]
    spread = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in (STRATEGY.experimental_local_results(v.value) for v in statistics))
    under_strategy = distiller.predict(images, batch_size=2 * HALF, verbose=0)
    exported = kerakd.models.core_keras(distiller.student)
    one_device = keras.models.clone_model(exported)  # outside the strategy
    one_device.set_weights(exported.get_weights())
    alone = one_device.predict(images, batch_size=2 * HALF, verbose=0)
    return {"statistics": len(statistics), "spread": spread,
            "prediction_diff": float(np.max(np.abs(under_strategy - alone)))}


CHECKS = {"sync_batchnorm": compare_sync_batchnorm, "clip_grad_norm": compare_clip_grad_norm,
          "replica_batchnorm": compare_replica_batchnorm}


def main():
    out_path, names = sys.argv[1], sys.argv[2:] or kerakd.methods.available()
    results = {}
    for name in names:
        try:
            results[name] = CHECKS[name]() if name in CHECKS else compare(name)
        except Exception as error:  # reported per method, the test fails on it
            results[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
        keras.backend.clear_session()
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
