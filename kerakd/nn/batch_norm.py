"""BatchNormalization whose moving statistics follow PyTorch's.

Keras and PyTorch normalize a training batch alike (with the biased batch
variance), but update the moving variance differently: Keras with the biased
variance, PyTorch with the unbiased one, `var * n / (n - 1)` for `n` values per
channel (examples x positions). Every inference-mode output therefore drifts
from the reference code's, by 1/n of each update: 1.6% for a BatchNorm over a
batch of 64 vectors, 2e-4 for one over 64 images of 8x8. This layer updates
as PyTorch does (`docs/methods/conventions.md`, "BatchNorm").

It also trains faster: on 4-D channels-last inputs with per-replica
statistics it runs TensorFlow's fused kernel (`FusedBatchNormV3`, which
returns the unbiased batch variance itself), where Keras builds training-mode
BatchNorm from separate moment and normalization ops (`docs/benchmarks.md`,
"Fused BatchNorm").

Inference is exactly Keras's, with the same four weights, so a model of these
layers converts losslessly to core Keras layers (`kerakd.models.core_keras`)
for deployment.
"""

import keras
import tensorflow as tf
from keras import ops

# The input dtypes FusedBatchNormV3 takes (with float32 scale, offset and
# statistics): float64 goes the op-by-op way.
_FUSED_DTYPES = ("float32", "float16", "bfloat16")


@keras.saving.register_keras_serializable(package="kerakd")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with PyTorch's defaults and moving-variance update.

    In training mode, with `n` values per channel in the batch (the global
    batch's under `synchronized=True`):

        y = gamma * (x - mean) / sqrt(var + epsilon) + beta
        moving_mean     <- momentum * moving_mean     + (1 - momentum) * mean
        moving_variance <- momentum * moving_variance + (1 - momentum) * var * n / (n - 1)

    with `mean`, `var` the batch's mean and biased variance over every axis
    but `axis`. Inference mode uses the moving statistics, as Keras does.

    Training on 4-D inputs with the channels last and per-replica statistics
    (not `synchronized`) runs TensorFlow's fused kernel, in the input's
    dtype under mixed precision (its statistics in float32); other ranks,
    `synchronized=True` and float64 go op by op, to the same values. Masked
    inputs (kerakd masks none) train as Keras's layer does.

    Args:
        axis: the channel axis.
        momentum: PyTorch's `1 - momentum` (PyTorch's default 0.1 is 0.9 here).
        epsilon: added to the variance (PyTorch's default 1e-5; Keras's 1e-3).
        fused: None (default) trains with the fused kernel where it can run;
            False never uses it; True raises a ValueError where it cannot
            run (as tf.keras 2's `fused`). Saved only when not None.
        **kwargs: the other arguments of `keras.layers.BatchNormalization`
            except `renorm` (PyTorch has no batch renormalization).

    Example:

    >>> import numpy as np
    >>> from kerakd.nn import BatchNormalization
    >>> bn = BatchNormalization()
    >>> x = np.random.rand(8, 4, 4, 3).astype("float32")
    >>> _ = bn(x, training=True)
    >>> expected = 0.9 + 0.1 * x.reshape(-1, 3).var(0, ddof=1)
    >>> bool(np.allclose(bn.moving_variance.numpy(), expected, rtol=1e-5))
    True
    """

    def __init__(self, axis=-1, momentum=0.9, epsilon=1e-5, fused=None, **kwargs):
        if kwargs.get("renorm"):
            raise ValueError(
                "kerakd's BatchNormalization follows PyTorch, which has no batch "
                "renormalization; use keras.layers.BatchNormalization(renorm=True)."
            )
        if fused and kwargs.get("synchronized"):
            raise ValueError("fused=True cannot synchronize: TensorFlow's fused kernel "
                             "reads one replica's batch; use fused=None or False.")
        super().__init__(axis=axis, momentum=momentum, epsilon=epsilon, **kwargs)
        self.fused = fused

    def build(self, input_shape):
        super().build(input_shape)
        if self.fused and not self._fusable(len(input_shape), self.compute_dtype):
            raise ValueError(
                f"fused=True: TensorFlow's fused kernel takes 4-D inputs with the channels "
                f"last in {', '.join(_FUSED_DTYPES)}; got shape {tuple(input_shape)}, axis "
                f"{self.axis}, dtype {self.compute_dtype}.")

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable):
            return super().call(inputs, training=training, mask=mask)
        if mask is not None:
            if self.fused:
                raise ValueError("fused=True: TensorFlow's fused kernel takes no mask.")
            # As Keras (its biased update): kerakd never masks a BatchNorm.
            return super().call(inputs, training=training, mask=mask)
        if self._fusable(len(inputs.shape), inputs.dtype):
            y, mean, unbiased = self._fused_training(inputs)
        else:
            y, mean, unbiased = self._training(inputs)
        keep = self.momentum
        self.moving_mean.assign(
            ops.cast(self.moving_mean, mean.dtype) * keep + mean * (1.0 - keep))
        self.moving_variance.assign(
            ops.cast(self.moving_variance, unbiased.dtype) * keep + unbiased * (1.0 - keep))
        return ops.cast(y, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        if self.fused is not None:
            # Unset, it is left out: the layer's saved configuration (and
            # `core_keras`'s copy for Keras's layer) stays as it was.
            config["fused"] = self.fused
        return config

    def _fusable(self, rank, dtype):
        return (self.fused is not False and rank == 4 and self.axis % 4 == 3
                and not self.synchronized
                and keras.backend.standardize_dtype(dtype) in _FUSED_DTYPES)

    def _fused_training(self, x):
        """`(y, mean, unbiased variance)` from one FusedBatchNormV3."""
        gamma, beta = self._scale_and_offset(x.shape[-1], "float32")
        # TensorFlow: keras.ops has no fused BatchNorm. Half inputs go in as
        # they are (the kernel accumulates in float32, as Keras's upcast
        # does) and come out in their dtype; the statistics are float32.
        return tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)

    def _training(self, inputs):
        """`(y, mean, unbiased variance)` op by op, as Keras computes them
        (float32 for half inputs)."""
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        gamma, beta = self._scale_and_offset(x.shape[self.axis], x.dtype)
        axes = [i for i in range(len(x.shape)) if i != self.axis % len(x.shape)]
        mean, variance = ops.moments(x, axes=axes, synchronized=self.synchronized)
        count = ops.cast(ops.prod(ops.take(ops.shape(x), axes)), x.dtype)
        if self.synchronized:
            # No replica context while a strategy's scope builds the model.
            context = tf.distribute.get_replica_context() or tf.distribute.get_strategy()
            count *= context.num_replicas_in_sync
        # A single value per channel has no unbiased variance (PyTorch
        # refuses it); its update then keeps the biased 0, as the fused
        # kernel's does.
        unbiased = variance * count / ops.maximum(count - 1.0, 1.0)
        y = ops.batch_normalization(
            x, mean, variance, axis=self.axis, offset=beta, scale=gamma, epsilon=self.epsilon)
        return y, mean, unbiased

    def _scale_and_offset(self, channels, dtype):
        gamma = ops.ones((channels,), dtype) if self.gamma is None else ops.cast(self.gamma, dtype)
        beta = ops.zeros((channels,), dtype) if self.beta is None else ops.cast(self.beta, dtype)
        return gamma, beta


def core_keras(model):
    """`model` with core Keras layers only, for deployment.

    Each `kerakd.nn.BatchNormalization` becomes a `keras.layers.BatchNormalization`
    of the same configuration and weights, whose inference is identical (the
    two differ only in how training updates the moving variance), so the
    result loads in a process that never imports kerakd. A model without
    kerakd layers is returned as it is.

    Args:
        model: a functional or Sequential Keras model (nested ones too).

    Returns:
        A functional Keras model (a copy) or `model`.

    Example:

    >>> import kerakd
    >>> student = kerakd.models.get("resnet8", num_classes=10, input_shape=(28, 28, 1))
    >>> deployable = kerakd.models.core_keras(student)
    >>> any(isinstance(l, kerakd.nn.BatchNormalization) for l in deployable.layers)
    False
    """
    if not any(isinstance(layer, BatchNormalization) for layer in _all_layers(model)):
        return model

    def clone(layer):
        if not isinstance(layer, BatchNormalization):
            return type(layer).from_config(layer.get_config())
        config = layer.get_config()
        config.pop("fused", None)  # kerakd's switch of its training path; Keras has none
        return keras.layers.BatchNormalization.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
