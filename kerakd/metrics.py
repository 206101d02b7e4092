"""Metrics the `Distiller` reports."""

import keras
from keras import ops


class BatchMean(keras.metrics.Mean):
    """`keras.metrics.Mean` that is NaN, not 0, over no examples (an epoch
    whose every batch was skipped has no mean loss; 0 would read as perfect)."""

    def result(self):
        return ops.where(self.count > 0, super().result(), float("nan"))
