"""`vid`: Ahn et al., "Variational Information Distillation for Knowledge
Transfer" (CVPR 2019)."""

import math

import keras
from keras import ops

from kerakd import losses
from kerakd.methods.base import (
    Method, MethodOutput, check_non_negative, check_paired_taps, check_positive,
)
from kerakd.methods.registry import register
from kerakd.nn import layers as nn_layers


def _pool_factor(size, target, side):
    if size % target:
        raise ValueError(
            f"VID average-pools the larger tap of a pair to the smaller one's "
            f"size, so sizes must divide; the {side} tap is {size} wide and the "
            f"other {target}. Choose taps whose sizes divide."
        )
    return size // target


def match_spatial_size(student, teacher):
    """Average-pools the larger of two feature maps to the other's size.

    RepDistiller's `F.adaptive_avg_pool2d`, which for sizes that divide is a
    plain average pooling with window = stride = the ratio.
    """
    (s_h, s_w), (t_h, t_w) = student.shape[1:3], teacher.shape[1:3]
    if s_h > t_h or s_w > t_w:
        pool = (_pool_factor(s_h, t_h, "student"), _pool_factor(s_w, t_w, "student"))
        student = ops.average_pool(student, pool, pool, padding="valid")
    elif s_h < t_h or s_w < t_w:
        pool = (_pool_factor(t_h, s_h, "teacher"), _pool_factor(t_w, s_w, "teacher"))
        teacher = ops.average_pool(teacher, pool, pool, padding="valid")
    return student, teacher


def vid_loss(mean, target, log_scale, min_variance=1e-5):
    """Gaussian negative log-likelihood of `target` (up to a constant).

    `mean_{b,h,w,c} 0.5 * ((mean - target)^2 / var_c + log var_c)` with the
    per-channel variance `var = softplus(log_scale) + min_variance`.
    """
    variance = ops.softplus(ops.cast(log_scale, "float32")) + min_variance
    error = ops.cast(mean, "float32") - ops.stop_gradient(ops.cast(target, "float32"))
    return ops.mean(0.5 * (ops.square(error) / variance + ops.log(variance)))


@register("vid")
class VID(Method):
    """`ce_weight * CE + vid_weight * sum_pairs VID(f_s, f_t)`.

    As RepDistiller's `VIDLoss`: pairs are the i-th stage taps of both
    networks (its `feat[1:-1]`); the larger map of a pair is average-pooled to
    the smaller one's size; a regressor conv1x1 -> ReLU -> conv1x1 -> ReLU ->
    conv1x1 (no biases, C_t middle channels) predicts the mean of the
    teacher's features, and a learned per-channel variance
    `softplus(log_scale) + min_variance`, initialised to `init_variance`,
    scales the error. The loss can be negative (it includes `log var`).
    RepDistiller trains it with gamma 1, beta 1 (`-a 0 -b 1`).

    Args:
        ce_weight: weight of the `ce` term, the reference code's gamma (default 1).
        vid_weight: weight of the `vid` term, the reference code's beta (default 1).
        init_variance: initial variance of every channel (default 5).
        min_variance: lower bound added to the variance (default 1e-5).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> distiller = kerakd.Distiller(student, kerakd.methods.get("vid"), teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 1.0, 'vid': 1.0}
    >>> images = np.random.rand(8, 16, 16, 3).astype("float32")
    >>> {name: tuple(f.shape) for name, f in distiller.student_features(images).items()}
    {'stage1': (8, 16, 16, 16), 'stage2': (8, 8, 8, 32), 'stage3': (8, 4, 4, 64)}
    >>> {name: tuple(f.shape) for name, f in distiller.teacher_features(images).items()}
    {'stage1': (8, 16, 16, 64), 'stage2': (8, 8, 8, 128), 'stage3': (8, 4, 4, 256)}
    """

    student_taps = {"features": "stages"}
    teacher_taps = {"features": "stages"}

    def __init__(self, ce_weight=1.0, vid_weight=1.0, init_variance=5.0,
                 min_variance=1e-5, **kwargs):
        super().__init__(**kwargs)
        check_non_negative(ce_weight=ce_weight, vid_weight=vid_weight)
        check_positive(min_variance=min_variance)
        if not init_variance > min_variance:
            raise ValueError(
                f"`init_variance` must be > `min_variance` ({min_variance}), "
                f"got {init_variance}."
            )
        self.ce_weight = ce_weight
        self.vid_weight = vid_weight
        self.init_variance = init_variance
        self.min_variance = min_variance
        self.set_term_weights({"ce": ce_weight, "vid": vid_weight})

    def build(self, spec):
        super().build(spec)
        pairs = check_paired_taps("VID", spec)
        # softplus(log_scale) + min_variance == init_variance.
        log_scale = math.log(math.expm1(self.init_variance - self.min_variance))
        self.regressors, self.log_scales = [], []
        for i, (s_shape, t_shape) in enumerate(pairs):
            s_shape, t_shape = self._matched_shapes(s_shape, t_shape, i)
            channels = t_shape[-1]
            regressor = keras.Sequential(
                [
                    nn_layers.conv2d(channels, 1, activation="relu"),
                    nn_layers.conv2d(channels, 1, activation="relu"),
                    nn_layers.conv2d(channels, 1),
                ],
                name=f"regressor{i}",
            )
            regressor.build(s_shape)
            self.regressors.append(regressor)
            self.log_scales.append(
                self.add_weight(
                    shape=(channels,),
                    initializer=keras.initializers.Constant(log_scale),
                    name=f"log_scale{i}",
                )
            )

    @staticmethod
    def _matched_shapes(s_shape, t_shape, i):
        try:
            s, t = match_spatial_size(
                keras.KerasTensor(s_shape), keras.KerasTensor(t_shape)
            )
        except ValueError as error:
            raise ValueError(f"VID pair {i}: {error}") from None
        return s.shape, t.shape

    def call(self, data, training=False):
        terms = []
        pairs = zip(data.student["features"], data.teacher["features"])
        for (f_s, f_t), regressor, log_scale in zip(pairs, self.regressors, self.log_scales):
            f_s, f_t = match_spatial_size(f_s, f_t)
            mean = regressor(f_s, training=training)
            terms.append(vid_loss(mean, f_t, log_scale, self.min_variance))
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "vid": sum(terms),
            })
        )
