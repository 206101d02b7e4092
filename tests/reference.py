"""What the tests share: float64 NumPy references (written from the method
pages, independent of kerakd's code), `TapSpec`/`StepData` builders and small
generated data. Test modules import these from here, never from each other."""

import numpy as np
import tensorflow as tf

from kerakd.methods.base import StepData, TapSpec

NUM_CLASSES = 5
IMAGE_SHAPE = (16, 16, 3)
BN_EPSILON = 1e-5


# -- data -------------------------------------------------------------------------

def make_images(n=8, shape=IMAGE_SHAPE, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def make_labels(n=8, num_classes=NUM_CLASSES, seed=0):
    return np.random.default_rng(seed + 1).integers(0, num_classes, size=n).astype("int32")


def make_dataset(n=32, batch_size=8, shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, seed=0):
    """A repeatable (images, int labels) dataset with drop_remainder batches."""
    ds = tf.data.Dataset.from_tensor_slices(
        (make_images(n, shape, seed), make_labels(n, num_classes, seed))
    )
    return ds.batch(batch_size, drop_remainder=True)


def features(*shape, positive=False, seed=0):
    """A fixed random float32 array (absolute values with `positive`)."""
    x = np.random.default_rng(seed).normal(size=shape).astype("float32")
    return np.abs(x) if positive else x


def build_on_taps(method, student, teacher, batch=8, classes=NUM_CLASSES):
    """Builds `method` for `"features"` taps of the given arrays' shapes."""
    method.build(TapSpec(
        student={"features": [s.shape for s in student]},
        teacher={"features": [t.shape for t in teacher]},
        student_logits=(batch, classes), teacher_logits=(batch, classes),
        image_shape=(batch, 16, 16, 3),
    ))
    return method


def step_on_taps(student, teacher, z_s=None, z_t=None, labels=None, batch=8,
                 classes=NUM_CLASSES):
    """A training `StepData` of these `"features"` taps (fixed logits unless given)."""
    return StepData(
        images=None,
        labels=np.arange(batch) % classes if labels is None else labels,
        student={"features": list(student)},
        student_logits=features(batch, classes, seed=10) if z_s is None else z_s,
        teacher={"features": list(teacher)},
        teacher_logits=features(batch, classes, seed=11) if z_t is None else z_t,
        training=True,
    )


def fixed_step(student_shapes, teacher_shapes, batch=8, seed=0):
    """A TapSpec and a StepData of fixed random taps and logits, the taps
    named `s<i>` and `t<j>`."""
    rng = np.random.default_rng(seed)

    def taps(shapes):
        return [rng.normal(size=(batch, *s[1:])).astype("float32") for s in shapes]

    spec = TapSpec(
        student={"features": [(batch, *s[1:]) for s in student_shapes]},
        teacher={"features": [(batch, *s[1:]) for s in teacher_shapes]},
        student_logits=(batch, NUM_CLASSES),
        teacher_logits=(batch, NUM_CLASSES),
        image_shape=(batch, *IMAGE_SHAPE),
        student_tap_names={"features": [f"s{i}" for i in range(len(student_shapes))]},
        teacher_tap_names={"features": [f"t{j}" for j in range(len(teacher_shapes))]},
    )
    data = StepData(
        images=make_images(batch),
        labels=make_labels(batch),
        student={"features": taps(student_shapes)},
        student_logits=rng.normal(size=(batch, NUM_CLASSES)).astype("float32") * 2,
        teacher={"features": taps(teacher_shapes)},
        teacher_logits=rng.normal(size=(batch, NUM_CLASSES)).astype("float32") * 3,
        training=True,
    )
    return spec, data


def randomize_weights(model, seed=0):
    """Fixed random values for every weight (positive BatchNorm variances)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if "seed_generator" in v.path:
            continue
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
        else:
            v.assign(0.5 * rng.normal(size=v.shape).astype("float32"))


def randomize_trainable(method, seed=1, scale=0.5):
    """Fixed random values for every trainable weight (BN scales around 1)."""
    rng = np.random.default_rng(seed)
    for v in method.trainable_variables:
        value = rng.normal(scale=scale, size=v.shape)
        if v.path.endswith("gamma"):
            value = 1.0 + 0.3 * value
        v.assign(value.astype("float32"))


def f64(arrays):
    return [np.float64(a) for a in arrays]


# -- logits -----------------------------------------------------------------------


def np_softmax(z, t=1.0, axis=-1):
    """Softmax of `z / t` along `axis` (default: per row)."""
    z = np.asarray(z, "float64") / t
    e = np.exp(z - z.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def np_log_softmax(z, t=1.0):
    """Log-softmax of `z / t` along the last axis."""
    z = np.asarray(z, "float64") / t
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(p, log_q):
    """`mean_b KL(p || q)` for distributions `p` and log-probabilities `log q`."""
    p = np.asarray(p, "float64")
    return np.mean(np.sum(p * (np.log(p) - log_q), axis=-1))


def np_kd(z_s, z_t, t):
    """`T^2 * mean_b KL(softmax(z_t / T) || softmax(z_s / T))`."""
    log_p_t, log_p_s = np_log_softmax(z_t, t), np_log_softmax(z_s, t)
    return t * t * np.mean(np.sum(np.exp(log_p_t) * (log_p_t - log_p_s), -1))


def np_ce(z, y):
    """Mean cross-entropy of logits `z` against integer labels `y`, or soft
    labels `(B, K)` (MixUp/CutMix)."""
    y = np.asarray(y)
    if y.ndim == 2:
        return np.mean(-(y * np_log_softmax(z)).sum(-1))
    return -np.mean(np_log_softmax(z)[np.arange(len(y)), y])


def np_standardize(z):
    """Logit standardisation: z-scores per row, unbiased std, eps on the std."""
    z = np.asarray(z, "float64")
    return (z - z.mean(1, keepdims=True)) / (z.std(1, ddof=1, keepdims=True) + 1e-7)


def np_dkd(z_s, z_t, y, t):
    """DKD's `(tckd, nckd)` term by term: the binary (target, rest) KL and the
    KL over the non-target classes (the target masked by -1000)."""
    z_s, z_t = np.asarray(z_s, "float64"), np.asarray(z_t, "float64")
    gt = np.eye(z_s.shape[1])[y]
    p_s, p_t = np_softmax(z_s / t), np_softmax(z_t / t)
    b_s = np.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    b_t = np.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    tckd = (b_t * (np.log(b_t) - np.log(b_s))).sum() * t**2 / len(y)
    q_t = np_softmax(z_t / t - 1000 * gt)
    log_q_s = np.log(np_softmax(z_s / t - 1000 * gt) + 1e-300)
    nckd = np.sum(np.where(q_t > 0, q_t * (np.log(q_t + 1e-300) - log_q_s), 0)) * t**2 / len(y)
    return tckd, nckd


# -- features ---------------------------------------------------------------------

def np_normalize(x, axis=-1):
    """`x / max(||x||, 1e-12)` along `axis` (PyTorch's `F.normalize`)."""
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def np_at_map(f):
    """The attention map of docs/methods/conventions.md: normalized mean
    squared channel energy, flattened per example."""
    e = (np.asarray(f, "float64") ** 2).mean(-1).reshape(len(f), -1)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def np_at(f_s, f_t):
    """`mean_{b,hw} (at(f_s) - at(f_t))^2` of two maps of the same size."""
    return np.mean((np_at_map(f_s) - np_at_map(f_t)) ** 2)


def np_adaptive_pool(x, size):
    """PyTorch's adaptive_avg_pool2d of a channels-last map, bin by bin."""
    b, h, w, c = x.shape
    out = np.zeros((b, *size, c))
    for p in range(size[0]):
        rows = slice(p * h // size[0], -(-(p + 1) * h // size[0]))
        for q in range(size[1]):
            cols = slice(q * w // size[1], -(-(q + 1) * w // size[1]))
            out[:, p, q] = x[:, rows, cols].mean(axis=(1, 2))
    return out


def np_resize(x, size):
    """Average-pools (integer factor down) or repeats (integer factor up) H and W."""
    b, h, w, c = x.shape
    if size[0] <= h:
        return x.reshape(b, size[0], h // size[0], size[1], w // size[1], c).mean(axis=(2, 4))
    return np.repeat(np.repeat(x, size[0] // h, axis=1), size[1] // w, axis=2)


# -- layers -----------------------------------------------------------------------

def np_batch_norm(x, layer, training=True):
    """`layer`'s BatchNorm: biased batch statistics over all but the last
    axis in training, its moving statistics otherwise."""
    gamma, beta, moving_mean, moving_var = layer.get_weights()
    if training:
        axes = tuple(range(x.ndim - 1))
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    else:
        mean, var = moving_mean, moving_var
    return (x - mean) / np.sqrt(var + BN_EPSILON) * gamma + beta


def np_dense(x, dense):
    return x @ np.float64(dense.kernel.numpy()) + np.float64(dense.bias.numpy())


def np_depthwise(x, kernel, strides):
    """3x3 depthwise convolution with one pixel of zero padding on every side."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    height = (x.shape[1] - 1) // strides + 1
    width = (x.shape[2] - 1) // strides + 1
    out = np.zeros((x.shape[0], height, width, x.shape[3]), "float64")
    for i in range(3):
        for j in range(3):
            window = padded[:, i:i + strides * height:strides, j:j + strides * width:strides]
            out += window * kernel[i, j, :, 0]
    return out


def numpy_branch(model, name, x, strides, training=False):
    """The separable branch `name` of `model`, re-implemented from docs/methods/lfma.md."""
    x = np.asarray(x, "float64")
    for k, stride in enumerate(strides, start=1):
        prefix = f"{name}_block{k}"
        for part, step in ((1, stride), (2, 1)):
            x = np_depthwise(x, model.get_layer(f"{prefix}_dw{part}").get_weights()[0], step)
            x = x @ model.get_layer(f"{prefix}_pw{part}").get_weights()[0][0, 0]
            x = np.maximum(np_batch_norm(x, model.get_layer(f"{prefix}_bn{part}"), training), 0)
    return x.mean(axis=(1, 2))
