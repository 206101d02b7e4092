"""Link matrices: heatmap rendering and the TensorBoard callback of SemCKD/AFD."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd
from kerakd import link_matrix
from reference import fixed_step, make_dataset


def read_images(log_dir):
    """`{(tag, step): decoded RGB image}` of every image summary under `log_dir`."""
    images = {}
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    png = tf.make_ndarray(value.tensor)[2]
                    images[value.tag, event.step] = tf.io.decode_png(png, channels=3).numpy()
    return images


def test_heatmap_is_an_rgb_image_that_shows_the_values():
    names = ["stage1", "stage2"]
    low = link_matrix.render_heatmap(np.full((2, 3), 0.1), names, ["a", "b", "c"])
    high = link_matrix.render_heatmap(np.full((2, 3), 0.9), names, ["a", "b", "c"])
    assert low.dtype == np.uint8 and low.ndim == 3 and low.shape[-1] == 3
    assert low.shape == high.shape and not np.array_equal(low, high)
    # Wider matrices get wider images, so labels stay readable.
    wide = link_matrix.render_heatmap(np.zeros((2, 9)), names, [str(i) for i in range(9)])
    assert wide.shape[1] > low.shape[1]


def test_heatmap_rejects_labels_that_do_not_fit():
    with pytest.raises(ValueError, match="2 row names and 3 column names; got 2 and 2"):
        link_matrix.render_heatmap(np.zeros((2, 3)), ["a", "b"], ["c", "d"])
    with pytest.raises(ValueError, match="2-D"):
        link_matrix.render_heatmap(np.zeros(3), ["a"], ["b"])


@pytest.mark.parametrize(
    "name, rows, columns", [("semckd", ["s0", "s1"], ["t0", "t1", "t2"]),
                            ("afd", ["t0", "t1", "t2"], ["s0", "s1"])]
)
def test_axes_are_labelled_by_tap_names(monkeypatch, name, rows, columns):
    spec, _ = fixed_step([(8, 4, 4, 4)] * 2, [(8, 4, 4, 6)] * 3)
    method = kerakd.methods.get(name)
    method.build(spec)
    seen = {}

    def render(matrix, row_names, column_names, **kwargs):
        seen.update(shape=matrix.shape, rows=row_names, columns=column_names)
        return np.zeros((4, 4, 3), np.uint8)

    monkeypatch.setattr(link_matrix, "render_heatmap", render)
    (callback,) = method.callbacks("unused", None)
    callback.image()
    assert seen == {"shape": (len(rows), len(columns)), "rows": rows, "columns": columns}


def test_callback_needs_a_built_method():
    (callback,) = kerakd.methods.get("afd").callbacks("unused", None)
    with pytest.raises(ValueError, match="not built yet"):
        callback.image()


def test_link_image_is_written_every_epoch_during_fit(tmp_path, teacher, student):
    distiller = kerakd.Distiller(student, "semckd", teacher)
    distiller.compile(keras.optimizers.SGD(0.01))
    # Created before the Distiller builds the method, as the CLI does.
    callbacks = distiller.method.callbacks(str(tmp_path), None)
    distiller.fit(make_dataset(n=8), epochs=2, verbose=0, callbacks=callbacks)

    images = read_images(str(tmp_path / "link_matrix"))
    assert set(images) == {("semckd/link_matrix", 0), ("semckd/link_matrix", 1)}
    # The last image is the final link matrix, drawn.
    np.testing.assert_array_equal(images["semckd/link_matrix", 1], callbacks[0].image())
    assert distiller.method.link_matrix.numpy().sum() > 0
