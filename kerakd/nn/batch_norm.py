"""BatchNormalization whose moving statistics follow PyTorch's.

Keras and PyTorch normalize a training batch alike (with the biased batch
variance), but update the moving variance differently: Keras with the biased
variance, PyTorch with the unbiased one, `var * n / (n - 1)` for `n` values per
channel (examples x positions). Every inference-mode output therefore drifts
from the reference code's, by 1/n of each update: 1.6% for a BatchNorm over a
batch of 64 vectors, 2e-4 for one over 64 images of 8x8. This layer updates
as PyTorch does (`docs/methods/conventions.md`, "BatchNorm").

It also runs faster: for 4-D channels-last inputs it uses TensorFlow's fused
kernel (which returns the unbiased batch variance itself), where Keras builds
training-mode BatchNorm from separate moment and normalization ops.

Inference is exactly Keras's, with the same four weights, so a model of these
layers converts losslessly to core Keras layers (`kerakd.models.core_keras`)
for deployment.
"""

import keras
import tensorflow as tf
from keras import ops


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

    Args:
        axis: the channel axis.
        momentum: PyTorch's `1 - momentum` (PyTorch's default 0.1 is 0.9 here).
        epsilon: added to the variance (PyTorch's default 1e-5; Keras's 1e-3).
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

    def __init__(self, axis=-1, momentum=0.9, epsilon=1e-5, **kwargs):
        if kwargs.get("renorm"):
            raise ValueError(
                "kerakd's BatchNormalization follows PyTorch, which has no batch "
                "renormalization; use keras.layers.BatchNormalization(renorm=True)."
            )
        super().__init__(axis=axis, momentum=momentum, epsilon=epsilon, **kwargs)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None:
            # Inference, and masked inputs (never used by kerakd), as Keras.
            return super().call(inputs, training=training, mask=mask)
        # Computed in float32 under mixed precision, as Keras does.
        x = ops.cast(inputs, "float32")
        gamma = ops.ones((x.shape[self.axis],)) if self.gamma is None else ops.cast(self.gamma, "float32")
        beta = ops.zeros((x.shape[self.axis],)) if self.beta is None else ops.cast(self.beta, "float32")
        if self._fusable(x):
            y, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
            )
        else:
            axes = [i for i in range(len(x.shape)) if i != self.axis % len(x.shape)]
            mean, variance = ops.moments(x, axes=axes, synchronized=self.synchronized)
            count = ops.cast(ops.prod(ops.take(ops.shape(x), axes)), "float32")
            if self.synchronized:
                # No replica context while a strategy's scope builds the model.
                context = tf.distribute.get_replica_context() or tf.distribute.get_strategy()
                count *= context.num_replicas_in_sync
            # A single value per channel has no unbiased variance (PyTorch
            # refuses it); its update then keeps the biased 0.
            unbiased = variance * count / ops.maximum(count - 1.0, 1.0)
            y = ops.batch_normalization(
                x, mean, variance, axis=self.axis, offset=beta, scale=gamma,
                epsilon=self.epsilon,
            )
        keep = self.momentum
        self.moving_mean.assign(
            ops.cast(self.moving_mean, "float32") * keep + mean * (1.0 - keep))
        self.moving_variance.assign(
            ops.cast(self.moving_variance, "float32") * keep + unbiased * (1.0 - keep))
        return ops.cast(y, self.compute_dtype)

    def _fusable(self, x):
        # TensorFlow's fused kernel: 4-D, channels last, per-replica statistics.
        return len(x.shape) == 4 and self.axis % 4 == 3 and not self.synchronized


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
        cls = keras.layers.BatchNormalization if isinstance(layer, BatchNormalization) else type(layer)
        return cls.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
