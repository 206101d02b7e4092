"""Where a `kerakd-train` run computes: devices, distribution strategy, precision.

`--num_logical_cpus` splits the CPU into logical devices (to try a
multi-replica strategy without accelerators), `--strategy` picks the
`tf.distribute` strategy, and `--mixed_precision` the Keras dtype policy.
"""

import tensorflow as tf
from absl import app


def configure_devices(num_logical_cpus):
    """Splits the CPU into logical devices; only possible before TF starts.

    Args:
        num_logical_cpus: `--num_logical_cpus`; 0 or None leaves the CPU as is.

    Raises:
        absl.app.UsageError: TensorFlow has already started in this process.
    """
    if not num_logical_cpus:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu) or []
    if len(current) == num_logical_cpus:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_logical_cpus
        )
    except RuntimeError as error:
        raise app.UsageError(
            f"--num_logical_cpus={num_logical_cpus}: TensorFlow has already "
            "started in this process; run kerakd-train in a fresh process."
        ) from error


def strategy(name, tpu):
    """The `tf.distribute` strategy of `--strategy`.

    Args:
        name: `"default"`, `"mirrored"` (all GPUs, or else every logical CPU),
            `"tpu"` or `"multi_worker"`.
        tpu: `--tpu`, the TPU to connect to (for `"tpu"`).

    Raises:
        absl.app.UsageError: no TPU could be reached.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # All GPUs, or else every (logical) CPU.
        gpus = tf.config.list_logical_devices("GPU")
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(None if gpus else cpus)
    if name == "tpu":
        return _tpu_strategy(tpu)
    return tf.distribute.MultiWorkerMirroredStrategy()


def _tpu_strategy(tpu):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        raise app.UsageError(
            f"--strategy=tpu --tpu={tpu}: no TPU could be reached "
            f"({str(error).splitlines()[0][:200]}). Run on a TPU VM (--tpu=local) or "
            "pass the TPU's name or grpc:// address; without a TPU use "
            "--strategy=default or mirrored."
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def precision_policy(mixed_precision):
    """The Keras dtype policy of `--mixed_precision`: `"float32"` when off,
    else `"mixed_float16"` on a GPU and `"mixed_bfloat16"` on CPU or TPU.

    Args:
        mixed_precision: `--mixed_precision`.

    Example:

    >>> from kerakd.devices import precision_policy
    >>> precision_policy(False)
    'float32'
    """
    if not mixed_precision:
        return "float32"
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
