"""A short distillation fit under MultiWorkerMirroredStrategy (one worker).

Launched twice by tests/test_distribution.py with TF_CONFIG naming two
localhost workers; each prints its final loss and weight checksum as JSON.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kerakd  # noqa: E402

with strategy.scope():
    keras.utils.set_random_seed(0)
    student = kerakd.models.get("resnet8", 5, (16, 16, 3))
    teacher = kerakd.models.get("wrn_16_1", 5, (16, 16, 3))
    distiller = kerakd.Distiller(student, "kd", teacher)
    distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))

rng = np.random.default_rng(0)
images = rng.normal(size=(64, 16, 16, 3)).astype("float32")
labels = rng.integers(0, 5, 64).astype("int32")
# Global batch 16: each of the two workers runs 8 examples a step.
ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16, drop_remainder=True)
history = distiller.fit(ds, epochs=2, verbose=0).history
print(json.dumps({
    "loss": [float(v) for v in history["loss"]],
    "checksum": float(sum(np.sum(v.numpy()) for v in student.trainable_variables)),
    # BatchNorm moving statistics: each worker sees other examples, so they
    # agree only if the Distiller averages them across workers.
    "moving_checksum": float(sum(np.sum(v.numpy()) for v in student.non_trainable_variables)),
    "steps": int(distiller.optimizer.iterations.numpy()),
}))
