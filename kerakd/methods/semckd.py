"""`semckd`: Chen et al., "Cross-Layer Distillation with Semantic Calibration" (AAAI 2021)."""

import keras
from keras import ops

from kerakd import link_matrix
from kerakd import losses
from kerakd.methods import logit_standardization as ls
from kerakd.methods.base import Method, MethodOutput, check_non_negative, check_positive
from kerakd.methods.feature_ops import adaptive_average_pool, l2_normalize
from kerakd.methods.registry import register
from kerakd.models import layers as zoo_layers
from kerakd.nn import layers as nn_layers


def gram(features):
    """`R(f) R(f)^T`: the `(B, B)` inner products of the flattened examples."""
    flat = ops.reshape(ops.cast(features, "float32"), (ops.shape(features)[0], -1))
    return ops.matmul(flat, ops.transpose(flat))


def _embedding(batch_size, name):
    # The reference's MLPEmbed(B, B // 4): B -> 2 (B // 4) -> B // 4. Float32
    # even under mixed precision: raw Gram entries overflow float16.
    width = batch_size // 4
    return keras.Sequential(
        [
            nn_layers.linear(2 * width, batch_size, activation="relu", dtype="float32",
                             name="hidden"),
            nn_layers.linear(width, 2 * width, dtype="float32", name="out"),
        ],
        name=name,
    )


def _projector(teacher_channels, name):
    # The reference's AAEmbed: three bias-free convs with BN-ReLU between.
    mid = 2 * teacher_channels
    return keras.Sequential(
        [
            nn_layers.conv2d(mid, 1, name="conv1"),
            zoo_layers.batch_norm("bn1"),
            keras.layers.ReLU(name="relu1"),
            nn_layers.conv2d(mid, 3, padding="same", name="conv2"),
            zoo_layers.batch_norm("bn2"),
            keras.layers.ReLU(name="relu2"),
            nn_layers.conv2d(teacher_channels, 1, name="conv3"),
        ],
        name=name,
    )


def _aligned_size(student_shape, teacher_shape):
    """The spatial size a (student, teacher) pair is compared at: the smaller."""
    s_size, t_size = tuple(student_shape[1:3]), tuple(teacher_shape[1:3])
    return t_size if s_size[0] > t_size[0] else s_size


def _pairwise(distance, num_student, num_teacher):
    """`(B, S, T)` stack of `distance(i, j)`, a `(B,)` value per tap pair."""
    rows = [ops.stack([distance(i, j) for j in range(num_teacher)], axis=-1)
            for i in range(num_student)]
    return ops.stack(rows, axis=1)


def _association_mean(attention, values):
    """`sum_{b,i,j} att[b,i,j] * values[b,i,j] / (B * S)`: the attention-weighted
    mean over student taps and examples (rows of `att` sum to 1 over teacher taps)."""
    batch, student_taps = attention.shape[0], attention.shape[1]
    return ops.sum(attention * values) / float(batch * student_taps)


@register("semckd")
class SemCKD(Method):
    """`ce_weight * CE + kd_weight * KD_T + semckd_weight * L_SemCKD` (docs/methods/semckd.md).

    Every student stage tap `i` is distilled from every teacher stage tap `j`
    through a projector `proj_ij`, weighted by a per-example attention
    `att[b, i, j]` (softmax over teacher taps) between a query of the
    student's and a key of the teacher's `(B, B)` Gram matrices:

        L_SemCKD = sum_{b,i,j} att[b,i,j] * mean_hwc (proj_ij(f_s_i)[b] - f_t_j[b])^2 / (B * S)

    The attention is trained by this loss (no stop-gradient); teacher Grams
    and features are stop-gradient targets. Any numbers of taps and channel
    counts work: the query/key MLPs and the `S x T` projectors are built from
    the tap shapes. Spatial sizes are aligned by adaptive average pooling of
    the larger map, as the reference does.

    The query/key MLPs read Gram rows, so their width is the per-replica
    batch `B` the method is built for: train on batches of exactly that size
    (`dataset.batch(B * replicas, drop_remainder=True)`); another size
    raises an error. `B` must be at least 4 (the keys have `B // 4` dims).

    Each training step stores the batch-mean attention, the `(S, T)` student x
    teacher link matrix, in `self.link_matrix`; `callbacks()` draws it to
    TensorBoard every epoch. The step also reports `sm_score` (paper Eq. 18):
    the attention-weighted mean squared difference between student and
    teacher Gram rows, reduced like the loss (sum over b, i, j of `att` times
    the MSE of row b of the two Grams, divided by `B * S`); lower means the
    attention links student taps to teacher taps of similar semantics.

    Args:
        ce_weight: weight of the `ce` term (the label cross-entropy), the
            reference code's gamma (default 1).
        kd_weight: weight of the `kd` term, the reference code's alpha
            (default 1; 9 with LS).
        semckd_weight: weight of the `semckd` term (`L_SemCKD`), the
            reference code's beta (default 400 for CIFAR; the paper uses 50
            on ImageNet).
        temperature: T of the KD term (default 4; 2 with LS).
        tau: attention temperature, `logits = <q, k> / tau`. 1 is the paper's
            SemCKD (no `1/sqrt(d)` scaling); 2 or 4 give the softened
            SemCKD_tau variant.
        logit_standardization: standardise both logits per example before
            the KD term (docs/methods/kd.md, "Logit standardisation"; the
            presets of KD with LS for the unset `kd_weight` and
            `temperature`).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> method = kerakd.methods.get("semckd", tau=2.0)
    >>> distiller = kerakd.Distiller(student, method, teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 1.0, 'kd': 1.0, 'semckd': 400.0}
    >>> [type(c).__name__ for c in method.callbacks("runs/semckd/logs", None)]   # for fit
    ['LinkMatrixLogger']
    """

    student_taps = {"features": "stages"}
    teacher_taps = {"features": "stages"}

    def __init__(
        self,
        ce_weight=1.0,
        kd_weight: float | None = None,
        semckd_weight=400.0,
        temperature: float | None = None,
        tau=1.0,
        logit_standardization=False,
        **kwargs,
    ):
        # Keras would derive "sem_ckd" from the class name; TensorBoard tags
        # read better with the registered name.
        kwargs.setdefault("name", "semckd")
        super().__init__(**kwargs)
        kd_weight = ls.preset(kd_weight, 1.0, 9.0, logit_standardization)
        temperature = ls.preset(temperature, 4.0, 2.0, logit_standardization)
        check_non_negative(ce_weight=ce_weight, kd_weight=kd_weight, semckd_weight=semckd_weight)
        check_positive(temperature=temperature, tau=tau)
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.semckd_weight = semckd_weight
        self.temperature = temperature
        self.tau = tau
        self.logit_standardization = bool(logit_standardization)
        self.set_term_weights({"ce": ce_weight, "kd": kd_weight, "semckd": semckd_weight})

    def build(self, spec):
        super().build(spec)
        batch = spec.batch_size
        if batch is None:
            raise ValueError(
                "SemCKD needs the per-replica batch size when it is built (its "
                "attention MLPs read B x B Gram rows), but the batch dimension is "
                "unknown. Batch the training set with drop_remainder=True, or "
                "build the Distiller with a fixed batch: distiller.build((B, H, W, C))."
            )
        if batch < 4:
            raise ValueError(
                f"SemCKD needs a per-replica batch of at least 4 (its keys have "
                f"B // 4 dimensions); got {batch}."
            )
        student, teacher = spec.student["features"], spec.teacher["features"]
        self.queries = [_embedding(batch, f"query_{i}") for i in range(len(student))]
        self.keys = [_embedding(batch, f"key_{j}") for j in range(len(teacher))]
        for mlp in self.queries + self.keys:
            mlp.build((batch, batch))
        # Flat, row-major over (student tap i, teacher tap j).
        self.projectors = []
        for i, s_shape in enumerate(student):
            for j, t_shape in enumerate(teacher):
                projector = _projector(t_shape[-1], f"projector_{i}_{j}")
                projector.build((batch, *_aligned_size(s_shape, t_shape), s_shape[-1]))
                self.projectors.append(projector)
        self.link_matrix = link_matrix.add_variable(self, (len(student), len(teacher)))

    def _check_batch(self, features):
        batch = features[0].shape[0]
        if batch != self.spec.batch_size:
            raise ValueError(
                f"SemCKD was built for a per-replica batch of {self.spec.batch_size} "
                f"(its attention MLPs read Gram rows of that width) but got a batch "
                f"of {'unknown size' if batch is None else batch}. Batch the "
                "training set with drop_remainder=True and a per-replica batch "
                f"of {self.spec.batch_size}."
            )

    def attention(self, student_grams, teacher_grams):
        """Per-example attention `(B, S, T)` of student over teacher taps.

        Args:
            student_grams: list of `S` `(B, B)` Gram matrices.
            teacher_grams: list of `T` `(B, B)` Gram matrices.
        """
        # keras.ops.normalize's rsqrt writing, which SemCKD was benchmarked with.
        query = ops.stack([l2_normalize(mlp(g), epsilon_on="inverse_norm")
                           for mlp, g in zip(self.queries, student_grams)], axis=1)
        key = ops.stack([l2_normalize(mlp(g), epsilon_on="inverse_norm")
                         for mlp, g in zip(self.keys, teacher_grams)], axis=1)
        logits = ops.einsum("bsd,btd->bst", query, key) / self.tau
        return ops.softmax(logits, axis=-1)

    def _feature_distance(self, f_s, f_t, projector, training):
        """`d[b]`: mean squared error of the projected student map vs the teacher's."""
        size = _aligned_size(f_s.shape, f_t.shape)
        projected = projector(adaptive_average_pool(f_s, size), training=training)
        error = ops.square(ops.cast(projected, "float32") - adaptive_average_pool(f_t, size))
        return ops.mean(error, axis=(1, 2, 3))

    def call(self, data, training=False):
        student = data.student["features"]
        teacher = [ops.stop_gradient(f) for f in data.teacher["features"]]
        self._check_batch(student)
        student_grams = [gram(f) for f in student]
        teacher_grams = [gram(f) for f in teacher]
        attention = self.attention(student_grams, teacher_grams)
        if training:
            self.link_matrix.assign(ops.mean(attention, axis=0))
        num_teacher = len(teacher)
        distances = _pairwise(
            lambda i, j: self._feature_distance(
                student[i], teacher[j], self.projectors[i * num_teacher + j], training
            ),
            len(student),
            num_teacher,
        )
        gram_errors = _pairwise(
            lambda i, j: ops.mean(ops.square(student_grams[i] - teacher_grams[j]), axis=-1),
            len(student),
            num_teacher,
        )
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "kd": ls.kd_term(data, self.temperature, self.logit_standardization),
                "semckd": _association_mean(attention, distances),
            }),
            metrics={"sm_score": ops.stop_gradient(_association_mean(attention, gram_errors)),
                     **ls.scale_metrics(data, self.logit_standardization)},
        )

    def callbacks(self, log_dir, sample_images):
        """A `LinkMatrixLogger` drawing the student x teacher link matrix."""
        return [link_matrix.LinkMatrixLogger(self, log_dir, rows="student", columns="teacher")]
