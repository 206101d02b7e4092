"""Tensor math several methods share, written with `keras.ops`.

The one home of L2 normalisation, cosine matrices, pairwise distances and
PyTorch's adaptive average pooling. They live here, not in `kerakd.losses`:
they transform tensors, while `kerakd.losses` holds the loss terms,
functions of predictions and targets that return a scalar.
"""

import numpy as np
from keras import ops


def l2_normalize(x, axis=-1, epsilon=1e-12, epsilon_on="squares", square="square"):
    """`x / max(||x||, epsilon)` along `axis`: PyTorch's `F.normalize`.

    The one L2 normalisation of kerakd, in several writings of the same
    value whose last bits differ: TensorFlow's graph optimizer turns a
    division by a square root into a product with its reciprocal, and the
    gradient of `x * x` sums two products where `square(x)`'s doubles one,
    so each writing rounds its values or gradients its own way. Each method
    keeps the one its numbers were benchmarked with. `epsilon_on` says where
    the floor applies:

    - `"squares"` (default; CRD, SP, PKT, RKD): `x / sqrt(max(sum x^2,
      epsilon^2))`, so that a zero vector (RKD's `e_i - e_i`) gets a zero
      gradient rather than the NaN of differentiating `sqrt` at 0.
    - `"norm"` (AID; with `square="product"`, the attention maps of AT,
      FRSKD and AFD, `kerakd.losses.attention_map`): `x / max(sqrt(sum
      x^2), epsilon)`, as `F.normalize` writes it.
    - `"inverse_norm"` (SemCKD; AFD's attention values): `x *
      min(rsqrt(sum x^2), 1 / epsilon)`, as `keras.ops.normalize(x,
      epsilon=epsilon)` writes it.

    Args:
        x: a float tensor.
        axis: the axis normalised to unit length.
        epsilon: the smallest norm divided by (PyTorch's default, 1e-12).
        epsilon_on: `"squares"`, `"norm"` or `"inverse_norm"`, see above.
        square: how the squares summed are written: `"square"`
            (`square(x)`) or `"product"` (`x * x`), see above.

    Example:

    >>> from kerakd.methods.feature_ops import l2_normalize
    >>> x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype="float32")
    >>> keras.ops.convert_to_numpy(l2_normalize(x))   # a zero row stays zero
    array([[0.6, 0.8],
           [0. , 0. ]], dtype=float32)
    """
    if epsilon_on not in ("squares", "norm", "inverse_norm"):
        raise ValueError(
            f"`epsilon_on` is 'squares', 'norm' or 'inverse_norm', got {epsilon_on!r}.")
    if square not in ("square", "product"):
        raise ValueError(f"`square` is 'square' or 'product', got {square!r}.")
    squares = ops.sum(ops.square(x) if square == "square" else x * x, axis=axis, keepdims=True)
    if epsilon_on == "squares":
        return x / ops.sqrt(ops.maximum(squares, epsilon * epsilon))
    if epsilon_on == "norm":
        return x / ops.maximum(ops.sqrt(squares), epsilon)
    return x * ops.minimum(ops.rsqrt(squares), 1.0 / epsilon)


def cosine_similarity_matrix(rows, columns=None, epsilon_on="squares"):
    """Cosines between the rows of `rows` and those of `columns`.

    Args:
        rows: `(..., N, D)`.
        columns: `(..., M, D)`; default `rows` (normalised once, so the
            gradient of both sides meets before the normalisation).
        epsilon_on: where `l2_normalize` applies its floor.

    Returns:
        `(..., N, M)`: entry `[i, k]` is `cos(rows[i], columns[k])`.
    """
    rows = l2_normalize(rows, epsilon_on=epsilon_on)
    columns = rows if columns is None else l2_normalize(columns, epsilon_on=epsilon_on)
    return ops.matmul(rows, ops.swapaxes(columns, -1, -2))


def pairwise_distances(x, epsilon=1e-12):
    """Euclidean distances between the rows of `x` `(N, D)`, zero diagonal.

    Squared distances are clamped at `epsilon` before the square root, as in
    RepDistiller's `RKDLoss.pdist`.
    """
    squares = ops.sum(ops.square(x), axis=-1)
    squared = squares[:, None] + squares[None, :] - 2.0 * ops.matmul(x, ops.transpose(x))
    off_diagonal = 1.0 - ops.eye(ops.shape(x)[0], dtype=x.dtype)
    return ops.sqrt(ops.maximum(squared, epsilon)) * off_diagonal


def _bin_averages(size_in, size_out):
    """`(size_out, size_in)` matrix averaging PyTorch's adaptive-pooling bins."""
    matrix = np.zeros((size_out, size_in), "float32")
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)  # ceil
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_average_pool(x, size):
    """PyTorch's `adaptive_avg_pool2d` of a channels-last map, in float32.

    Output cell `(p, q)` averages input rows `[floor(p*H/h), ceil((p+1)*H/h))`
    and the matching columns, so a smaller `size` average-pools and a larger
    one repeats cells (nearest upsampling for integer ratios).

    Whole ratios take the plain ops (average pooling with stride = window,
    or repeating cells), several times faster than the general path, a
    product with bin-averaging matrices; both give the same numbers up to
    float32 rounding.

    Args:
        x: `(B, H, W, C)` with static `H`, `W`.
        size: target `(h, w)`.

    Returns:
        `(B, h, w, C)` float32.

    Example:

    >>> from kerakd.methods.feature_ops import adaptive_average_pool
    >>> x = np.arange(25.0).reshape(1, 5, 5, 1)    # x[0, i, j, 0] = 5 i + j
    >>> pooled = adaptive_average_pool(x, (2, 2))  # windows: rows (and columns) 0-2, 2-4
    >>> keras.ops.convert_to_numpy(pooled)[0, :, :, 0].round(4)
    array([[ 6.,  8.],
           [16., 18.]], dtype=float32)
    >>> tuple(adaptive_average_pool(x, (10, 10)).shape)   # each cell repeated 2x2
    (1, 10, 10, 1)
    """
    # Not keras.ops.adaptive_average_pool (3.15.1): 1 ulp off when down-sampling; fails 5x5 -> 1x1.
    x = ops.cast(x, "float32")
    (height, width), size = x.shape[1:3], tuple(size)
    if (height, width) == size:
        return x
    if height % size[0] == 0 and width % size[1] == 0:
        window = (height // size[0], width // size[1])
        return ops.average_pool(x, window, strides=window, padding="valid")
    if size[0] % height == 0 and size[1] % width == 0:
        x = ops.repeat(x, size[0] // height, axis=1)
        return ops.repeat(x, size[1] // width, axis=2)
    return ops.einsum(
        "ph,bhwc,qw->bpqc",
        _bin_averages(height, size[0]),
        x,
        _bin_averages(width, size[1]),
    )
