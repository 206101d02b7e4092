"""kerakd BatchNorm's training step on 2 logical CPU devices (MirroredStrategy).

Run as a script (the CPU must be split before TensorFlow initialises):
`python tests/fused_batch_norm_replicas.py OUT.npz`. For per-replica
statistics (the fused kernel) and for `synchronized=True` (op by op, across
replicas) it runs one compiled training step of one layer on a global batch
whose halves differ, and writes the inputs and, per replica, the outputs,
the gradients of `sum(y * dy)` for the input, gamma and beta, the replica's
copy of the moving statistics after the step and how many FusedBatchNormV3
ops the step's graph holds. `tests/test_fused_batch_norm.py` checks them
against NumPy.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)

import numpy as np  # noqa: E402

import kerakd  # noqa: E402

SHAPE = (3, 4, 4, 5)  # one replica's batch


def inputs():
    rng = np.random.default_rng(7)
    # Different means and scales per half, so that per-replica and global
    # statistics differ.
    x = np.concatenate([rng.normal(1.0, 2.0, SHAPE), rng.normal(-2.0, 0.5, SHAPE)])
    dy = rng.normal(size=x.shape)
    gamma, beta = rng.uniform(0.5, 1.5, SHAPE[-1]), rng.normal(size=SHAPE[-1])
    return x.astype("float32"), dy.astype("float32"), gamma, beta


def replica_step(strategy, synchronized, x, dy, gamma, beta):
    with strategy.scope():
        layer = kerakd.nn.BatchNormalization(synchronized=synchronized)
        layer.build((None, *SHAPE[1:]))
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)

    def on_replica(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * dy)
        return (y, *tape.gradient(loss, [x, layer.gamma, layer.beta]))

    @tf.function
    def step(x, dy):
        return strategy.run(on_replica, args=(x, dy))

    halves = [(x[:SHAPE[0]], dy[:SHAPE[0]]), (x[SHAPE[0]:], dy[SHAPE[0]:])]
    x_in, dy_in = (strategy.experimental_distribute_values_from_function(
        lambda context, i=i: tf.constant(halves[context.replica_id_in_sync_group][i]))
        for i in (0, 1))
    graph = step.get_concrete_function(x_in, dy_in).graph
    fused_ops = sum(op.type == "FusedBatchNormV3" for op in graph.get_operations())
    results = step(x_in, dy_in)
    out = {"fused_ops": fused_ops}
    for name, value in zip(("y", "dx", "dgamma", "dbeta"), results):
        out[name] = np.stack([t.numpy() for t in strategy.experimental_local_results(value)])
    for name in ("moving_mean", "moving_variance"):
        copies = strategy.experimental_local_results(getattr(layer, name).value)
        out[name] = np.stack([np.asarray(c) for c in copies])
    return out


def main():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x, dy, gamma, beta = inputs()
    saved = {"x": x, "dy": dy, "gamma": gamma, "beta": beta}
    for synchronized in (False, True):
        prefix = "synchronized_" if synchronized else "per_replica_"
        for name, value in replica_step(strategy, synchronized, x, dy, gamma, beta).items():
            saved[prefix + name] = value
    np.savez(sys.argv[1], **saved)


if __name__ == "__main__":
    main()
