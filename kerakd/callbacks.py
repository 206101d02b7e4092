"""Callbacks and errors of a `Distiller`'s training."""

import math

import keras

NAN_POLICIES = ("stop", "skip_batch")


class NonFiniteLossError(RuntimeError):
    """A loss term was NaN or Inf during training (`nan_policy="stop"`)."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `NonFiniteLossError` after the first batch whose loss is NaN or Inf.

    The Distiller's trackers average over the epoch, so the first non-finite
    batch turns its term's average non-finite: that batch is the one named.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        values = {n: float(keras.ops.convert_to_numpy(v)) for n, v in (logs or {}).items()
                  if n == "loss" or n in self.model.term_trackers}
        bad = {n: v for n, v in values.items() if not math.isfinite(v)}
        if not bad:
            return
        # Name the terms at fault; `loss` alone only if their sum overflowed.
        terms = {n: v for n, v in bad.items() if n != "loss"} or bad
        described = ", ".join(f"'{n}' is {v}" for n, v in terms.items())
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        raise NonFiniteLossError(
            f"Loss term {described} at training step {step} (epoch {self._epoch + 1}, "
            f"batch {batch + 1}); training stopped. Lower the learning rate or check "
            "the data, or skip such batches with nan_policy='skip_batch' "
            "(--nan_policy=skip_batch)."
        )
