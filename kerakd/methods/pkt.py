"""`pkt`: Passalis & Tefas, "Learning Deep Representations with Probabilistic
Knowledge Transfer" (ECCV 2018)."""

from keras import ops

from kerakd import losses
from kerakd.methods.base import Method, MethodOutput, check_non_negative, check_one_pair
from kerakd.methods.feature_ops import cosine_similarity_matrix
from kerakd.methods.registry import register


def _kernel(features):
    # Cosine kernel shifted to [0, 1], each row a probability distribution.
    # In float64: the kernels of a batch are nearly uniform, and at weight
    # 30000 float32 rounding of their log-ratio shows in the objective.
    f = ops.cast(features, "float64")
    k = (cosine_similarity_matrix(ops.reshape(f, (ops.shape(f)[0], -1))) + 1.0) / 2.0
    return k / ops.sum(k, axis=1, keepdims=True)


def pkt_loss(student_features, teacher_features, epsilon=1e-7):
    """`mean_{ij} q_t log((q_t + eps) / (q_s + eps))` between cosine kernels.

    As RepDistiller's `PKT.cosine_similarity_loss`, the mean runs over all
    `B x B` entries and `eps = 1e-7`. One difference: the features are
    normalised by `max(||x||, 1e-12)` (the helper SP, RKD and CRD share)
    instead of `||x|| + 1e-7`, which agree to ~1e-7 relative for any
    non-vanishing feature vector. Computed in float64 (B x B values, cheap);
    returns float32.
    """
    q_s = _kernel(student_features)
    q_t = ops.stop_gradient(_kernel(teacher_features))
    return ops.cast(ops.mean(q_t * ops.log((q_t + epsilon) / (q_s + epsilon))), "float32")


@register("pkt")
class PKT(Method):
    """`ce_weight * CE + pkt_weight * PKT(f_s, f_t)` on penultimate embeddings.

    The kernels couple the examples of a batch, so each replica computes them
    on its own examples (docs/methods/conventions.md).

    Args:
        ce_weight: weight of the `ce` term, the reference code's gamma (default 1).
        pkt_weight: weight of the `pkt` term, the reference code's beta (default 30000).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> distiller = kerakd.Distiller(student, kerakd.methods.get("pkt"), teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 1.0, 'pkt': 30000.0}
    >>> images = np.random.rand(8, 16, 16, 3).astype("float32")
    >>> {name: tuple(f.shape) for name, f in distiller.student_features(images).items()}
    {'pool': (8, 64)}
    >>> {name: tuple(f.shape) for name, f in distiller.teacher_features(images).items()}
    {'pool': (8, 256)}
    """

    student_taps = {"features": "penultimate"}
    teacher_taps = {"features": "penultimate"}

    def __init__(self, ce_weight=1.0, pkt_weight=30000.0, **kwargs):
        super().__init__(**kwargs)
        check_non_negative(ce_weight=ce_weight, pkt_weight=pkt_weight)
        self.ce_weight = ce_weight
        self.pkt_weight = pkt_weight
        self.set_term_weights({"ce": ce_weight, "pkt": pkt_weight})

    def build(self, spec):
        super().build(spec)
        check_one_pair(spec, "PKT")

    def call(self, data, training=False):
        (f_s,), (f_t,) = data.student["features"], data.teacher["features"]
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "pkt": pkt_loss(f_s, f_t),
            })
        )
