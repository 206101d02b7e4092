"""Link matrices: how strongly each tap of one network learns from each tap of
the other (SemCKD, AFD), kept as a variable and drawn to TensorBoard.

A method that learns a tap-to-tap attention keeps its batch mean in a
non-trainable `(rows, columns)` variable (`add_variable`), updated every
training step; `LinkMatrixLogger` renders it as a labelled heatmap
(`render_heatmap`) and writes it with `tf.summary.image` at every epoch end.

Example:

>>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
>>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
>>> distiller = kerakd.Distiller(student, "semckd", teacher)
>>> distiller.build((8, 16, 16, 3))
>>> tuple(distiller.method.link_matrix.shape)   # student stages x teacher stages
(3, 3)
>>> [type(c).__name__ for c in distiller.method.callbacks("runs/x/logs", None)]
['LinkMatrixLogger']

Passed to `distiller.fit(..., callbacks=...)`, the logger draws the matrix
each epoch: `tensorboard --logdir runs/x/logs`, Images, `semckd/link_matrix`.
"""

import os

import keras
import numpy as np
import tensorflow as tf
# The Agg canvas directly, not pyplot: no window, and importing kerakd does
# not switch the matplotlib backend of the user's notebook.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def add_variable(layer, shape, name="link_matrix"):
    """Adds a non-trainable float32 link-matrix variable to `layer`.

    The variable starts at zero (no training step yet). It is created with
    `aggregation="mean"`: under `MirroredStrategy` each replica assigns the
    mean over its own examples and the stored value is the mean over
    replicas, i.e. over the global batch.

    Args:
        layer: the Keras layer (a method) that owns the variable.
        shape: `(rows, columns)`.
        name: variable name.

    Returns:
        The variable.
    """
    return layer.add_weight(
        shape=tuple(shape),
        initializer="zeros",
        dtype="float32",
        trainable=False,
        aggregation="mean",
        name=name,
    )


def render_heatmap(matrix, row_names, column_names, title="", row_label="", column_label=""):
    """Draws `matrix` as an annotated heatmap and returns it as an RGB image.

    The colour scale is fixed to [0, 1] (attention weights), so images of
    successive epochs compare at a glance.

    Args:
        matrix: `(rows, columns)` array of values in [0, 1].
        row_names: one label per row (e.g. student tap layer names).
        column_names: one label per column.
        title: figure title.
        row_label: y-axis label (e.g. `"student tap"`).
        column_label: x-axis label.

    Returns:
        A `(height, width, 3)` uint8 array.

    Example:

    >>> from kerakd.link_matrix import render_heatmap
    >>> image = render_heatmap(np.eye(2), ["stage1", "stage2"], ["stage1", "stage2"])
    >>> image.shape, image.dtype   # RGB pixels, as tf.summary.image takes them
    ((260, 390, 3), dtype('uint8'))
    """
    matrix = np.asarray(matrix, dtype="float32")
    if matrix.ndim != 2:
        raise ValueError(f"A link matrix must be 2-D, got shape {matrix.shape}.")
    if matrix.shape != (len(row_names), len(column_names)):
        raise ValueError(
            f"A link matrix of shape {matrix.shape} needs {matrix.shape[0]} row "
            f"names and {matrix.shape[1]} column names; got {len(row_names)} "
            f"and {len(column_names)}."
        )
    rows, columns = matrix.shape
    figure = Figure(figsize=(2.5 + 0.7 * columns, 1.8 + 0.4 * rows), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    heatmap = axes.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    figure.colorbar(heatmap, ax=axes)
    axes.set_xticks(range(columns), labels=list(column_names), rotation=45, ha="right")
    axes.set_yticks(range(rows), labels=list(row_names))
    axes.set_xlabel(column_label)
    axes.set_ylabel(row_label)
    axes.set_title(title)
    for (r, c), value in np.ndenumerate(matrix):
        # Dark text on the bright end of viridis, light text elsewhere.
        axes.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                  color="black" if value > 0.6 else "white")
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class LinkMatrixLogger(keras.callbacks.Callback):
    """Writes a method's link matrix to TensorBoard as an image every epoch.

    The method must have a `link_matrix` variable of shape `(rows, columns)`
    once built; rows and columns are labelled with the tap layer names of
    the `rows` and `columns` networks (`TapSpec.student_tap_names` /
    `teacher_tap_names`). The method is read at each epoch end, so the
    callback may be created before the `Distiller` builds it.

    Images go to `<log_dir>/link_matrix` under the tag `<method name>/link_matrix`.

    Args:
        method: a `kerakd.methods.Method` with a `link_matrix` variable.
        log_dir: the run's TensorBoard directory.
        rows: `"student"` or `"teacher"`, the network of the rows.
        columns: the network of the columns.
        role: the tap role whose names label the axes (default `"features"`).

    Example:

    >>> import os
    >>> from kerakd.link_matrix import LinkMatrixLogger
    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> distiller = kerakd.Distiller(student, "afd", teacher)
    >>> callback = LinkMatrixLogger(distiller.method, "runs/x/logs", rows="teacher",
    ...                             columns="student")   # for fit(..., callbacks=[callback])
    >>> distiller.build((8, 16, 16, 3))
    >>> tuple(distiller.method.link_matrix.shape)   # teacher blocks x student blocks
    (3, 3)
    >>> callback.on_epoch_end(0)   # what fit calls: writes the image
    >>> os.listdir("runs/x/logs/link_matrix")
    ['events.out.tfevents...']
    """

    def __init__(self, method, log_dir, rows="student", columns="teacher", role="features"):
        super().__init__()
        for side in (rows, columns):
            if side not in ("student", "teacher"):
                raise ValueError(f"`rows`/`columns` must be 'student' or 'teacher', got {side!r}.")
        self.method = method
        self.log_dir = os.path.join(log_dir, "link_matrix")
        self.rows = rows
        self.columns = columns
        self.role = role
        self._writer = None

    def _names(self, side):
        return getattr(self.method.spec, f"{side}_tap_names")[self.role]

    def image(self):
        """The current link matrix rendered by `render_heatmap`."""
        if not self.method.built:
            raise ValueError(
                f"Method '{self.method.name}' is not built yet: its link matrix "
                "exists once the Distiller has seen a batch."
            )
        return render_heatmap(
            keras.ops.convert_to_numpy(self.method.link_matrix.value),
            self._names(self.rows),
            self._names(self.columns),
            title=f"{self.method.name}: batch-mean attention",
            row_label=f"{self.rows} tap",
            column_label=f"{self.columns} tap",
        )

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            tf.summary.image(f"{self.method.name}/link_matrix", self.image()[None], step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
