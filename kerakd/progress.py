"""What `kerakd-train` prints while an epoch runs.

In a terminal Keras's progress bar shows each step. Written to a file or a
pipe (a log, a notebook cell, `nohup`), the bar's carriage returns are
noise, and Keras's one line per epoch leaves minutes of silence: there,
`StepLines` prints a line every few steps instead.
"""

import sys
import time

import keras


def console_verbosity(stream=None):
    """Keras's `verbose` for `fit`: the progress bar (1) in a terminal, else a
    line per epoch (2)."""
    stream = stream or sys.stdout
    return 1 if getattr(stream, "isatty", lambda: False)() else 2


class StepLines(keras.callbacks.Callback):
    """Prints `epoch E step S/N - <metric> <value> ... - <seconds>/step` every
    `every` steps (the running means Keras logs so far in the epoch).

    Args:
        every: steps between lines (0: none).
        steps_per_epoch: N, for the `S/N` count.
        stream: where to print (default: standard output).

    Example:

    >>> from kerakd.progress import StepLines
    >>> inputs = keras.Input((4,))
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    >>> model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> x, y = np.zeros((24, 4)), np.zeros(24)
    >>> _ = model.fit(x, y, batch_size=8, verbose=0, callbacks=[StepLines(1, 3)])
    epoch 1 step 1/3 - accuracy 1.0000 - loss 0.6931 - ...s/step
    epoch 1 step 2/3 - accuracy 1.0000 - loss 0.6931 - ...s/step
    """

    def __init__(self, every, steps_per_epoch, stream=None):
        super().__init__()
        self.every = every
        self.steps_per_epoch = steps_per_epoch
        self.stream = stream
        self._epoch, self._start = 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._start = epoch, time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        step = batch + 1
        if not self.every or step % self.every or step == self.steps_per_epoch:
            return  # the epoch's own line follows the last step
        seconds = (time.perf_counter() - self._start) / step
        values = " - ".join(f"{name} {float(value):.4f}" for name, value in (logs or {}).items())
        print(f"epoch {self._epoch + 1} step {step}/{self.steps_per_epoch} - {values} - "
              f"{seconds:.2f}s/step", file=self.stream or sys.stdout, flush=True)
