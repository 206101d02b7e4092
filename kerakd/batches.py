"""What a `Distiller` reads from a batch: images and labels, and for some
methods each example's dataset index or a second (strong) view of it.

A batch is `(images, labels)` or `({"images", "index", "strong_images"},
labels)`; `kerakd.data` pipelines make either (`with_index=True`,
`views=("weak", "strong")`), and `kerakd-train` picks what the method needs.
"""

import keras


def images_of(x):
    """The images of a batch's inputs `x` (an array, or a dict of them)."""
    return x["images"] if isinstance(x, dict) else x


def index_of(x):
    """The dataset indices of a batch's inputs `x`, or None."""
    return x.get("index") if isinstance(x, dict) else None


def strong_images_of(x, method):
    """The strong view of a batch's inputs `x`, or None; a method that
    needs one and gets none is told how to feed it.

    Raises:
        ValueError: `method.needs_strong_view` and `x` holds no strong view.
    """
    strong_images = x.get("strong_images") if isinstance(x, dict) else None
    if strong_images is None and method.needs_strong_view:
        raise ValueError(
            f"Method '{method.name}' trains on two views of each example: "
            "feed ({'images': weak, 'strong_images': strong}, labels) batches "
            "(kerakd.data pipelines do with views=('weak', 'strong'); "
            "kerakd-train does it by itself)."
        )
    return strong_images


def unpack(data, method, training):
    """`(images, labels, index, strong_images)` of a batch `data`.

    Args:
        data: what the dataset yields, `(x, y)` or `(x, y, sample_weight)`.
        method: the Distiller's method (what it needs besides the images).
        training: a training batch (validation reads images and labels only).

    Raises:
        ValueError: no labels, or a training batch lacks the dataset index
            or the strong view the method reads.
    """
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    if y is None:
        raise ValueError(
            "The Distiller trains on (images, labels) batches; the dataset "
            "yields no labels."
        )
    index = index_of(x)
    if training and index is None and method.needs_index:
        raise ValueError(
            f"Method '{method.name}' reads the dataset index of each "
            "example: feed ({'images': x, 'index': i}, labels) batches "
            "(kerakd.data pipelines do with with_index=True)."
        )
    strong_images = strong_images_of(x, method) if training else None
    return images_of(x), y, index, strong_images
