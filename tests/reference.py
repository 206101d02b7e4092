"""Float64 NumPy references shared by the method tests (written from the
contracts, independent of kerakd's code)."""

import numpy as np


def np_softmax(z, t=1.0):
    """Row softmax of `z / t`."""
    z = np.asarray(z, "float64") / t
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_log_softmax(z, t=1.0):
    """Row log-softmax of `z / t`."""
    z = np.asarray(z, "float64") / t
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def np_kd(z_s, z_t, t):
    """`T^2 * mean_b KL(softmax(z_t / T) || softmax(z_s / T))`."""
    log_p_t, log_p_s = np_log_softmax(z_t, t), np_log_softmax(z_s, t)
    return t * t * np.mean(np.sum(np.exp(log_p_t) * (log_p_t - log_p_s), 1))


def np_ce(z, y):
    """Mean cross-entropy of logits `z` against integer labels `y`."""
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
