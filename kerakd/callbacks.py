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


class StopOnSkippedBatches(keras.callbacks.Callback):
    """Stops a `--nan_policy=skip_batch` run that diverged: once more than
    `max_share` of an epoch's batches, or all of them, were skipped.

    It raises `NonFiniteLossError` after the batch that crosses the line,
    before the epoch ends: that epoch is neither checkpointed nor reported
    (its means would cover few batches, or none).

    Args:
        steps: the batches of an epoch.
        max_share: `--max_skipped_share`.
    """

    def __init__(self, steps, max_share):
        super().__init__()
        self.steps, self.max_share = steps, max_share

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        skipped = round(float(keras.ops.convert_to_numpy(
            (logs or {}).get("skipped_batches", 0))))
        if skipped < self.steps and skipped <= self.max_share * self.steps:
            return
        why = ("every batch" if skipped >= self.steps else
               f"more than --max_skipped_share={self.max_share:g} of its batches")
        raise NonFiniteLossError(
            f"--nan_policy=skip_batch skipped {skipped} of the {batch + 1} batches so "
            f"far of epoch {self._epoch + 1} ({self.steps} batches), {why}: the loss "
            "is NaN or Inf on most batches, so training has diverged; the run stops "
            "(exit 1) without exporting a student. Lower --learning_rate, set "
            "--clip_grad_norm, or check the data."
        )
