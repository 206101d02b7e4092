"""Loss terms shared by the methods (docs/methods/conventions.md), written with `keras.ops`.

Every function returns the per-replica value of its term: a mean over the
examples this replica sees. The `Distiller` turns per-replica values into a
global-batch objective (see `kerakd.distribute`), so methods never divide by
the number of replicas themselves.

All terms compute in float32, whatever the mixed-precision policy.
"""

from keras import ops


def _f32(x):
    return ops.cast(x, "float32")


def as_temperature(temperature):
    """`temperature` as the KD terms use it: a float, or a float32 tensor."""
    # A Python number stays one (a constant folded into the graph); a tensor
    # (a learned temperature) keeps its gradient.
    if isinstance(temperature, (int, float)):
        return float(temperature)
    return _f32(temperature)


def standardize_logits(logits, epsilon=1e-7, unbiased=True):
    """Logit standardisation (LS): `(z - mean_k z) / (std_k z + epsilon)` per row.

    The standard deviation is the unbiased one (divisor `K - 1`), as the
    LS reference computes it; `epsilon` is added to the deviation, not to the
    variance. The gradient flows through the row's mean and deviation.

    Args:
        logits: `(B, K)`, `K >= 2`.
        epsilon: added to the deviation (default 1e-7).
        unbiased: divide the variance by `K - 1` (default) or by `K` (the
            population deviation, AID's "Norm KD" choice: smaller by the
            factor `sqrt((K - 1) / K)`, ~0.5 % for 100 classes).

    Returns:
        float32 `(B, K)`.

    Example:

    >>> z = kerakd.losses.standardize_logits(np.array([[1.0, 2.0, 3.0, 4.0]]))
    >>> keras.ops.convert_to_numpy(z).round(4)
    array([[-1.1619, -0.3873,  0.3873,  1.1619]], dtype=float32)
    """
    z = _f32(logits)
    std = unbiased_std(z, keepdims=True) if unbiased else ops.std(z, axis=-1, keepdims=True)
    return (z - ops.mean(z, axis=-1, keepdims=True)) / (std + epsilon)


def unbiased_std(logits, keepdims=False):
    """Each row's standard deviation over the last axis with divisor `K - 1` (PyTorch's `std`)."""
    z = _f32(logits)
    centred = z - ops.mean(z, axis=-1, keepdims=True)
    divisor = ops.cast(ops.shape(z)[-1] - 1, "float32")
    return ops.sqrt(ops.sum(centred * centred, axis=-1, keepdims=keepdims) / divisor)


def cross_entropy(labels, logits):
    """Mean cross-entropy of `logits` against integer or soft labels.

    Args:
        labels: int class ids of shape `(B,)` (or `(B, 1)`), or a float
            distribution of shape `(B, K)` (MixUp/CutMix targets).
        logits: `(B, K)`.

    Returns:
        A float32 scalar.
    """
    log_probs = ops.log_softmax(_f32(logits), axis=-1)
    return ops.mean(-ops.sum(soft_labels(labels, ops.shape(logits)[-1]) * log_probs, axis=-1))


def soft_labels(labels, num_classes):
    """`labels` as a `(B, K)` float32 distribution (one-hot for int labels)."""
    if "int" in str(labels.dtype):
        return ops.one_hot(ops.reshape(labels, (-1,)), num_classes, dtype="float32")
    return _f32(labels)


def hard_labels(labels):
    """Integer class ids of `labels` (the argmax of soft labels)."""
    if "int" in str(labels.dtype):
        return ops.cast(ops.reshape(labels, (-1,)), "int32")
    return ops.cast(ops.argmax(labels, axis=-1), "int32")


def accuracy(labels, logits):
    """Fraction of rows whose arg-max logit is the (arg-max) label."""
    predicted = ops.cast(ops.argmax(logits, axis=-1), "int32")
    return ops.mean(_f32(ops.equal(predicted, hard_labels(labels))))


def kd_loss(student_logits, teacher_logits, temperature=4.0):
    """Hinton's KD term, `T^2 * mean_b KL(p_t || p_s)` at temperature `T`.

    Computed from `log_softmax` on both sides, so `0 * log 0 = 0` exactly and
    no probability is clipped (unlike `keras.losses.KLDivergence`). The
    teacher side is a stop-gradient target.

    Args:
        student_logits: `(B, K)`.
        teacher_logits: `(B, K)`.
        temperature: softening temperature `T > 0`, a number or a float32
            scalar tensor (a learned temperature, as CTKD's, gets the
            gradient of both `1/T` and `T^2`).

    Example:

    >>> teacher_logits = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    >>> float(kerakd.losses.kd_loss(teacher_logits, teacher_logits))   # equal logits
    0.0
    >>> float(kerakd.losses.kd_loss(np.zeros((2, 3)), teacher_logits, temperature=4.0))
    1.97...
    """
    t = as_temperature(temperature)
    log_p_t = ops.log_softmax(ops.stop_gradient(_f32(teacher_logits)) / t, axis=-1)
    log_p_s = ops.log_softmax(_f32(student_logits) / t, axis=-1)
    kl = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    return t * t * ops.mean(kl)


def attention_map(features):
    """Spatial attention `l2_normalize(mean_c f^2)` flattened to `(B, H*W)`.

    Uses `x / max(||x||, 1e-12)`, the normalisation of PyTorch's
    `F.normalize` that the AT, FRSKD and AFD reference code call.
    """
    # Imported here: importing kerakd.methods imports the methods, which import this module.
    from kerakd.methods.feature_ops import l2_normalize

    f = _f32(features)
    energy = ops.mean(f * f, axis=-1)
    energy = ops.reshape(energy, (ops.shape(energy)[0], -1))
    # Squares as products: the gradient bits AT's numbers were benchmarked with.
    return l2_normalize(energy, epsilon_on="norm", square="product")


def at_loss(student_features, teacher_features):
    """Attention transfer: `mean_{b,hw} (at(f_s) - at(f_t))^2`.

    The teacher map is a stop-gradient target. Spatial sizes must match: the
    `at` method first pools the larger feature map to the smaller one's size
    (`kerakd.methods.at.pool_to_smaller`).
    """
    s = attention_map(student_features)
    t = ops.stop_gradient(attention_map(teacher_features))
    return ops.mean(ops.square(s - t))
