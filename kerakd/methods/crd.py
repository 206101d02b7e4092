"""`crd`: Tian et al., "Contrastive Representation Distillation" (ICLR 2020)."""

import math

import keras
import tensorflow as tf
from keras import ops

from kerakd import losses
from kerakd.methods import logit_standardization as ls
from kerakd.methods.base import (
    Method, MethodOutput, check_non_negative, check_one_pair, check_positive)
from kerakd.methods.feature_ops import l2_normalize
from kerakd.methods.registry import register
from kerakd.nn import layers as nn_layers

# RepDistiller's `eps` in `ContrastLoss`.
_NCE_EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="kerakd")
class Embed(keras.layers.Layer):
    """CRD's embed head: flatten, a linear map to `units`, L2 normalisation.

    Args:
        units: size of the embedding (CRD's `feat_dim`).

    Example:

    >>> from kerakd.methods.crd import Embed
    >>> embedding = Embed(128)(np.random.rand(8, 256).astype("float32"))
    >>> tuple(embedding.shape), np.linalg.norm(embedding, axis=1).round(4)   # unit rows
    ((8, 128), array([1., 1., 1., 1., 1., 1., 1., 1.], dtype=float32))
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        # nn.Linear's init, whose bias bound needs the input width.
        in_features = math.prod(input_shape[1:])
        self.dense = nn_layers.linear(self.units, in_features, name="linear")
        self.dense.build((input_shape[0], in_features))

    def call(self, features):
        flat = ops.reshape(features, (ops.shape(features)[0], -1))
        return l2_normalize(ops.cast(self.dense(flat), "float32"))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config


def nce_loss(probabilities, noise_size):
    """CRD's NCE loss (its Eq. 18, RepDistiller's `ContrastLoss`).

    Args:
        probabilities: `(B, 1 + K)`: column 0 the positive pair's normalised
            score `P`, then the K negatives'.
        noise_size: N, the size of the set negatives are drawn from
            uniformly (noise probability `1 / N`).

    Returns:
        `-mean_b [log(P_0 / (P_0 + K/N + eps)) + sum_k log((K/N) / (P_k + K/N + eps))]`.
    """
    negatives = ops.shape(probabilities)[1] - 1
    noise = ops.cast(negatives, "float32") / float(noise_size)
    positive, negative = probabilities[:, 0], probabilities[:, 1:]
    log_d1 = ops.log(positive / (positive + noise + _NCE_EPSILON))
    log_d0 = ops.log(noise / (negative + noise + _NCE_EPSILON))
    return -ops.mean(log_d1 + ops.sum(log_d0, axis=1))


def _all_replicas(x):
    """`x` of every replica concatenated along axis 0 (`x` itself on one)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return x
    return context.all_gather(x, axis=0)


@register("crd")
class CRD(Method):
    """`ce_weight * CE + kd_weight * KD_T + crd_weight * (L_s + L_t)`.

    Embed heads (linear + L2 norm to `feat_dim`) map the penultimate features
    of both networks into one space. Each student embedding is contrasted
    with one positive and `negatives` negative teacher embeddings kept in a
    memory (`L_s`), and each teacher embedding with student ones (`L_t`); a
    score is `exp(<u, v> / nce_temperature) / Z`, with `Z` fixed on the first
    step (RepDistiller's `ContrastMemory`), and `nce_loss` scores them.
    docs/methods/crd.md's weights are CRD+KD (gamma 1, alpha 1, beta 0.8);
    `kd_weight=0` gives RepDistiller's CRD alone.

    Two memories:

    - Memory bank (default, `queue=False`): RepDistiller's. One row per
      training example (`num_data` rows, which the CLI sets from the
      dataset), read and written at the batch's dataset indices (the
      pipeline yields them: `needs_index` is True). The positive of example
      i is bank row i; the `negatives` rows are drawn uniformly with
      replacement (ContrastMemory's own sampler; RepDistiller's default
      data loader draws them from other classes instead). After the loss,
      row i becomes `normalize(momentum * row_i + (1 - momentum) * v_i)`.
      The default momentum is the reference's 0.5, which reproduces the
      published numbers; `momentum=0` is the momentum-free bank that
      stores the latest embedding.
    - Queue (`queue=True`): a FIFO of the last `negatives` embeddings of
      each network, the latest batch first; every example uses all of them as
      negatives and the other network's current embedding (a stop-gradient
      target) as its positive. It needs no dataset indices and its memory
      does not grow with the dataset; the noise set is the queue
      (N = `negatives`); `momentum` and `num_data` are unused.

    Memories and `Z` are non-trainable variables updated in the train step
    with the embeddings of all replicas (`all_gather`), so that under
    `MirroredStrategy` every copy holds the same rows.

    Args:
        ce_weight: weight of the `ce` term, the reference code's gamma (default 1).
        kd_weight: weight of the `kd` term, the reference code's alpha (default 1;
            9 with LS).
        crd_weight: weight of the `crd` term, the reference code's beta (default 0.8).
        temperature: T of the KD term (default 4; 2 with LS).
        feat_dim: embedding size (default 128).
        negatives: negatives per example, K (default 16384); the queue size.
        nce_temperature: temperature of the scores (default 0.07).
        momentum: memory-bank momentum in [0, 1) (default 0.5).
        num_data: number of training examples, the bank's rows (bank mode).
        queue: use a FIFO queue instead of the memory bank (default False).
        logit_standardization: standardise both logits per example before
            the KD term (docs/methods/kd.md, "Logit standardisation"; the
            presets of KD with LS for the unset `kd_weight` and
            `temperature`).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> method = kerakd.methods.get("crd", num_data=8)   # the training set's size
    >>> distiller = kerakd.Distiller(student, method, teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 1.0, 'kd': 1.0, 'crd': 0.8}
    >>> x = {"images": np.random.rand(8, 16, 16, 3).astype("float32"),
    ...      "index": np.arange(8)}   # each example's row of the memory bank
    >>> sorted(distiller.compute_loss_terms(x, np.arange(8)))
    ['ce', 'crd', 'kd']
    >>> queue = kerakd.methods.get("crd", queue=True, negatives=4096)   # batches need no index
    """

    student_taps = {"features": "penultimate"}
    teacher_taps = {"features": "penultimate"}

    def __init__(self, ce_weight=1.0, kd_weight: float | None = None, crd_weight=0.8,
                 temperature: float | None = None, feat_dim=128, negatives=16384,
                 nce_temperature=0.07, momentum=0.5, num_data=0, queue=False,
                 logit_standardization=False, **kwargs):
        super().__init__(**kwargs)
        kd_weight = ls.preset(kd_weight, 1.0, 9.0, logit_standardization)
        temperature = ls.preset(temperature, 4.0, 2.0, logit_standardization)
        check_non_negative(
            ce_weight=ce_weight, kd_weight=kd_weight, crd_weight=crd_weight,
            num_data=num_data,
        )
        check_positive(
            temperature=temperature, feat_dim=feat_dim, negatives=negatives,
            nce_temperature=nce_temperature,
        )
        if not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum}.")
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.crd_weight = crd_weight
        self.temperature = temperature
        self.feat_dim = feat_dim
        self.negatives = negatives
        self.nce_temperature = nce_temperature
        self.momentum = momentum
        self.num_data = num_data
        self.queue = queue
        self.needs_index = not queue
        self.logit_standardization = bool(logit_standardization)
        self.set_term_weights({"ce": ce_weight, "kd": kd_weight, "crd": crd_weight})
        self.embed_student = Embed(feat_dim, name="embed_student")
        self.embed_teacher = Embed(feat_dim, name="embed_teacher")

    @property
    def noise_size(self):
        """N: how many embeddings negatives are drawn from."""
        return self.negatives if self.queue else self.num_data

    def build(self, spec):
        super().build(spec)
        check_one_pair(spec, "CRD")
        if not self.queue and not self.num_data:
            raise ValueError(
                "CRD's memory bank has one row per training example: pass "
                "`num_data` (the training set size; the CLI sets it from the "
                "dataset), or `queue=True` for a fixed-size queue."
            )
        self.embed_student.build(spec.student["features"][0])
        self.embed_teacher.build(spec.teacher["features"][0])
        stdv = 1.0 / math.sqrt(self.feat_dim / 3.0)  # RepDistiller's initial memory

        def memory(name):
            return self.add_weight(
                shape=(self.noise_size, self.feat_dim),
                initializer=keras.initializers.RandomUniform(-stdv, stdv),
                trainable=False, name=name, aggregation="only_first_replica",
            )

        self.student_memory = memory("student_memory")
        self.teacher_memory = memory("teacher_memory")
        # Z of the student-anchor and teacher-anchor scores; < 0 until set.
        self.normalizers = self.add_weight(
            shape=(2,), initializer=keras.initializers.Constant(-1.0),
            trainable=False, name="normalizers", aggregation="only_first_replica",
        )
        if not self.queue:
            self.seed_generator = keras.random.SeedGenerator()

    @staticmethod
    def _index(index):
        if index is None:
            raise ValueError(
                "CRD's memory bank reads the dataset index of each example: the "
                "pipeline must yield ({'images': x, 'index': i}, y) batches, or "
                "use CRD(queue=True)."
            )
        return ops.cast(ops.reshape(index, (-1,)), "int32")

    def _scores(self, v_s, v_t, index):
        """`(B, 1 + K)` dot products of each anchor with its positive and negatives."""
        if self.queue:
            s_scores = ops.concatenate([
                ops.sum(v_s * ops.stop_gradient(v_t), axis=1, keepdims=True),
                ops.matmul(v_s, ops.transpose(self.teacher_memory)),
            ], axis=1)
            t_scores = ops.concatenate([
                ops.sum(v_t * ops.stop_gradient(v_s), axis=1, keepdims=True),
                ops.matmul(v_t, ops.transpose(self.student_memory)),
            ], axis=1)
            return s_scores, t_scores
        batch = ops.shape(v_s)[0]
        drawn = keras.random.randint(
            (batch, self.negatives), 0, self.num_data, dtype="int32",
            seed=self.seed_generator,
        )
        rows = ops.concatenate([index[:, None], drawn], axis=1)
        # Scores against every row, then the drawn columns: a (B, N) matmul
        # reads each memory once, where gathering the (B, 1 + K, D) rows first
        # (RepDistiller's way) moves B * (1 + K) * D floats, ~1 GiB a step at
        # B=128, K=16384 (see docs/benchmarks.md). The scores are the same.
        s_scores = ops.take_along_axis(
            ops.matmul(v_s, ops.transpose(self.teacher_memory)), rows, axis=1)
        t_scores = ops.take_along_axis(
            ops.matmul(v_t, ops.transpose(self.student_memory)), rows, axis=1)
        return s_scores, t_scores

    def _probabilities(self, s_scores, t_scores):
        """Scores as `exp(score / T) / Z`; sets Z on the first step."""
        exps = [ops.exp(s / self.nce_temperature) for s in (s_scores, t_scores)]
        first = ops.stop_gradient(
            ops.stack([ops.mean(_all_replicas(ops.reshape(ops.mean(e), (1,)))) for e in exps])
        )
        z = ops.where(self.normalizers < 0, first * float(self.noise_size), self.normalizers)
        self.normalizers.assign(z)
        return exps[0] / z[0], exps[1] / z[1]

    def _update_memories(self, v_s, v_t, index):
        v_s, v_t = ops.stop_gradient(v_s), ops.stop_gradient(v_t)
        if self.queue:
            for memory, v in ((self.student_memory, v_s), (self.teacher_memory, v_t)):
                latest = ops.concatenate([_all_replicas(v), memory], axis=0)
                memory.assign(latest[: self.negatives])
            return
        index = _all_replicas(index)
        for memory, v in ((self.student_memory, v_s), (self.teacher_memory, v_t)):
            rows = ops.take(memory, index, axis=0) * self.momentum
            rows = l2_normalize(rows + _all_replicas(v) * (1.0 - self.momentum))
            memory.assign(ops.scatter_update(memory, index[:, None], rows))

    def call(self, data, training=False):
        (f_s,), (f_t,) = data.student["features"], data.teacher["features"]
        v_s = self.embed_student(f_s)
        v_t = self.embed_teacher(ops.stop_gradient(f_t))
        index = None if self.queue else self._index(data.index)
        s_scores, t_scores = self._scores(v_s, v_t, index)
        p_s, p_t = self._probabilities(s_scores, t_scores)
        crd = nce_loss(p_s, self.noise_size) + nce_loss(p_t, self.noise_size)
        if training:
            self._update_memories(v_s, v_t, index)
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "kd": ls.kd_term(data, self.temperature, self.logit_standardization),
                "crd": crd,
            }),
            metrics=ls.scale_metrics(data, self.logit_standardization),
        )
