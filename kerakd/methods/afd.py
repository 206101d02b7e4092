"""`afd`: Ji et al., "Show, Attend and Distill: Knowledge Distillation via
Attention-based Feature Matching" (AAAI 2021)."""

import math

import keras
from keras import ops

from kerakd import link_matrix
from kerakd import losses
from kerakd.methods import logit_standardization as ls
from kerakd.methods.base import Method, MethodOutput, check_non_negative, check_positive
from kerakd.methods.feature_ops import adaptive_average_pool, l2_normalize
from kerakd.methods.registry import register
from kerakd.models import layers as zoo_layers
from kerakd.nn import initializers
from kerakd.nn import layers as nn_layers


def _dense_bn(units, in_features, relu, name):
    # The reference's nn_bn_relu: Linear -> BatchNorm1d (-> ReLU), PyTorch's init.
    stack = [nn_layers.linear(units, in_features, name="dense"), zoo_layers.batch_norm("bn")]
    if relu:
        stack.append(keras.layers.ReLU(name="relu"))
    return keras.Sequential(stack, name=name)


def _values(features, size):
    """`l2_normalize_over_HW(adaptive_pool(mean_c f^2 -> size))`, `(B, h*w)`."""
    f = ops.cast(features, "float32")
    energy = adaptive_average_pool(ops.mean(f * f, axis=-1, keepdims=True), size)
    # keras.ops.normalize's rsqrt writing, which AFD was benchmarked with.
    return l2_normalize(ops.reshape(energy, (ops.shape(f)[0], -1)), epsilon_on="inverse_norm")


@register("afd")
class AFD(Method):
    """`ce_weight * CE + kd_weight * KD_T + afd_weight * L_AFD` (docs/methods/afd.md).

    Every teacher block tap `t` attends over every student block tap `s`:

        logits[b,t,s] = (<bilinear(k_s)[b,t], q_t[b]> + <p_t, p_s>) / sqrt(d)
        att = softmax over s
        L_AFD = sum_t mean_b sum_s att[b,t,s] * mean_hw (v_s(t)[b] - v_t[b])^2

    with queries `q_t = BN(Dense(GAP(f_t)))`, keys
    `k_s = ReLU(BN(Dense(GAP(f_s))))`, one shared bilinear
    `BN(Dense(d -> d*T))` (its BatchNorm normalises over all B*S student
    keys, as the reference's), Glorot-normal positional embeddings `p_t`,
    `p_s`, teacher values `v_t = at(f_t)` and student values `v_s(t)`: the
    channel-mean energy of `f_s` adaptively average-pooled (or repeated) to
    `f_t`'s spatial size, then L2-normalised. The attention is trained by
    `L_AFD` (no stop-gradient); the teacher's values are stop-gradient.
    Any numbers of taps and channel counts work: every part is built from
    the tap shapes.

    Each training step stores the batch-mean attention, the `(T, S)` teacher x
    student link matrix, in `self.link_matrix`; `callbacks()` draws it to
    TensorBoard every epoch.

    Args:
        ce_weight: weight of the `ce` term, the label cross-entropy
            (default 1, not 1 - alpha).
        kd_weight: weight of the `kd` term, the reference code's alpha
            (default 0.9; 9 with LS).
        afd_weight: weight of the `afd` term (`L_AFD`), the reference code's
            beta (default 200 for CIFAR; the paper uses 50 on ImageNet, 1000
            for transfer learning).
        temperature: T of the KD term (default 4; 2 with LS).
        qk_dim: d, the query/key width (default 128).
        logit_standardization: standardise both logits per example before
            the KD term (docs/methods/kd.md, "Logit standardisation"; the
            presets of KD with LS for the unset `kd_weight` and
            `temperature`).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> method = kerakd.methods.get("afd")
    >>> distiller = kerakd.Distiller(student, method, teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 1.0, 'kd': 0.9, 'afd': 200.0}
    >>> images = np.random.rand(8, 16, 16, 3).astype("float32")
    >>> {name: tuple(f.shape) for name, f in distiller.student_features(images).items()}
    {'block1': (8, 16, 16, 16), 'block2': (8, 8, 8, 32), 'block3': (8, 4, 4, 64)}
    >>> [type(c).__name__ for c in method.callbacks("runs/afd/logs", None)]   # for fit
    ['LinkMatrixLogger']
    """

    student_taps = {"features": "blocks"}
    teacher_taps = {"features": "blocks"}

    def __init__(
        self,
        ce_weight=1.0,
        kd_weight: float | None = None,
        afd_weight=200.0,
        temperature: float | None = None,
        qk_dim=128,
        logit_standardization=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        kd_weight = ls.preset(kd_weight, 0.9, 9.0, logit_standardization)
        temperature = ls.preset(temperature, 4.0, 2.0, logit_standardization)
        check_non_negative(ce_weight=ce_weight, kd_weight=kd_weight, afd_weight=afd_weight)
        check_positive(temperature=temperature, qk_dim=qk_dim)
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.afd_weight = afd_weight
        self.temperature = temperature
        self.qk_dim = int(qk_dim)
        self.logit_standardization = bool(logit_standardization)
        self.set_term_weights({"ce": ce_weight, "kd": kd_weight, "afd": afd_weight})

    def build(self, spec):
        super().build(spec)
        student, teacher = spec.student["features"], spec.teacher["features"]
        d = self.qk_dim
        self.queries = [_dense_bn(d, shape[-1], False, f"query_{t}")
                        for t, shape in enumerate(teacher)]
        for query, shape in zip(self.queries, teacher):
            query.build((None, shape[-1]))
        self.keys = [_dense_bn(d, shape[-1], True, f"key_{s}") for s, shape in enumerate(student)]
        for key, shape in zip(self.keys, student):
            key.build((None, shape[-1]))
        self.bilinear = _dense_bn(d * len(teacher), d, False, "bilinear")
        self.bilinear.build((None, d))
        self.teacher_positions = self.add_weight(
            shape=(len(teacher), d), initializer=initializers.xavier_normal(),
            name="teacher_positions"
        )
        self.student_positions = self.add_weight(
            shape=(len(student), d), initializer=initializers.xavier_normal(),
            name="student_positions"
        )
        self.link_matrix = link_matrix.add_variable(self, (len(teacher), len(student)))

    def attention(self, student, teacher, training=False):
        """Per-example attention `(B, T, S)` of teacher over student taps.

        Args:
            student: list of `S` student feature maps `(B, H, W, C)`.
            teacher: list of `T` teacher feature maps.
            training: BatchNorm mode (batch statistics when True).
        """
        query = ops.stack(
            [q(ops.mean(f, axis=(1, 2)), training=training) for q, f in zip(self.queries, teacher)],
            axis=1,
        )
        key = ops.stack(
            [k(ops.mean(f, axis=(1, 2)), training=training) for k, f in zip(self.keys, student)],
            axis=1,
        )
        batch, num_student, d = ops.shape(key)[0], len(student), self.qk_dim
        bilinear_key = self.bilinear(ops.reshape(key, (-1, d)), training=training)
        bilinear_key = ops.reshape(bilinear_key, (batch, num_student, len(teacher), d))
        logits = ops.einsum(
            "bstq,btq->bts", ops.cast(bilinear_key, "float32"), ops.cast(query, "float32")
        )
        positions = ops.matmul(self.teacher_positions, ops.transpose(self.student_positions))
        return ops.softmax((logits + ops.cast(positions, "float32")) / math.sqrt(d), axis=-1)

    def call(self, data, training=False):
        student = data.student["features"]
        teacher = [ops.stop_gradient(f) for f in data.teacher["features"]]
        attention = self.attention(student, teacher, training)
        if training:
            self.link_matrix.assign(ops.mean(attention, axis=0))
        # Student values per distinct teacher size, shared by the taps of that size.
        student_values = {}
        afd = 0.0
        for t, f_t in enumerate(teacher):
            size = tuple(f_t.shape[1:3])
            if size not in student_values:
                student_values[size] = ops.stack([_values(f_s, size) for f_s in student], axis=1)
            teacher_values = losses.attention_map(f_t)[:, None, :]
            distance = ops.mean(ops.square(student_values[size] - teacher_values), axis=-1)
            afd += ops.mean(ops.sum(attention[:, t] * distance, axis=-1))
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "kd": ls.kd_term(data, self.temperature, self.logit_standardization),
                "afd": afd,
            }),
            metrics=ls.scale_metrics(data, self.logit_standardization),
        )

    def callbacks(self, log_dir, sample_images):
        """A `LinkMatrixLogger` drawing the teacher x student link matrix."""
        return [link_matrix.LinkMatrixLogger(self, log_dir, rows="teacher", columns="student")]
