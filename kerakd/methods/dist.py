"""`dist`: Huang et al., "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022)."""

from keras import ops

from kerakd import losses
from kerakd.methods.base import (Method, MethodOutput, check_non_negative, check_positive,
                                 renamed_arguments)
from kerakd.methods.registry import register


def pearson_correlation(a, b, axis=-1, epsilon=1e-8):
    """Pearson's correlation of `a` and `b` along `axis`, slice by slice.

    `rho(a, b) = <a - mean a, b - mean b> / (||a - mean a|| * ||b - mean b|| + epsilon)`.
    `epsilon` is added to the product of the two norms, so a constant slice
    (zero norm) gives 0 with a finite gradient. Invariant to a positive
    affine map of either argument (`rho(2a + 3, b) == rho(a, b)`) up to
    `epsilon`; the gradient flows through both arguments.

    Args:
        a: float tensor.
        b: float tensor of the same shape.
        axis: the axis the correlation runs along (default -1: per row of
            a `(B, K)` matrix; 0: per column).
        epsilon: added to the product of the norms (default 1e-8).

    Returns:
        float32 tensor of `a`'s shape without `axis`.

    Example:

    >>> from kerakd.methods.dist import pearson_correlation
    >>> a = np.array([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    >>> b = np.array([[5.0, 7.0, 11.0], [4.0, 2.0, 1.0]])   # 2a + 3, and a reversed
    >>> keras.ops.convert_to_numpy(pearson_correlation(a, b)).round(4)
    array([ 1.    , -0.9286], dtype=float32)
    """
    a, b = ops.cast(a, "float32"), ops.cast(b, "float32")
    a = a - ops.mean(a, axis=axis, keepdims=True)
    b = b - ops.mean(b, axis=axis, keepdims=True)
    norms = ops.sqrt(ops.sum(a * a, axis=axis)) * ops.sqrt(ops.sum(b * b, axis=axis))
    return ops.sum(a * b, axis=axis) / (norms + epsilon)


def dist_losses(student_logits, teacher_logits, temperature=4.0):
    """DIST's relations, `(inter, intra, row_correlation)`, for one replica's batch.

    With `Y = softmax(z / tau)` on each side (rows sum to 1):

    - `inter = tau^2 * (1 - mean_b rho(Y_s[b, :], Y_t[b, :]))`, each
      example's class distribution (per example: a mean over the batch);
    - `intra = tau^2 * (1 - mean_k rho(Y_s[:, k], Y_t[:, k]))`, each
      class's probabilities across the batch's examples (batch-coupled: its
      value depends on which examples share the batch);
    - `row_correlation = mean_b rho(Y_s[b, :], Y_t[b, :])`, the agreement
      score `1 - inter / tau^2`.

    The teacher side is a stop-gradient target; `rho` is `pearson_correlation`.

    Args:
        student_logits: `(B, K)`.
        teacher_logits: `(B, K)`.
        temperature: tau, a number or a float32 scalar tensor.

    Returns:
        Three float32 scalars.
    """
    t = losses.as_temperature(temperature)
    y_s = ops.softmax(ops.cast(student_logits, "float32") / t, axis=-1)
    y_t = ops.softmax(ops.stop_gradient(ops.cast(teacher_logits, "float32")) / t, axis=-1)
    row_correlation = ops.mean(pearson_correlation(y_s, y_t, axis=-1))
    column_correlation = ops.mean(pearson_correlation(y_s, y_t, axis=0))
    return (t * t * (1.0 - row_correlation), t * t * (1.0 - column_correlation),
            row_correlation)


@register("dist")
class DIST(Method):
    """`ce_weight * CE + kd_weight * (inter_weight * inter + intra_weight * intra)`.

    DIST matches the student's softened class probabilities to the
    teacher's by correlation rather than by KL: per example across the
    classes (`inter`) and per class across the batch (`intra`, computed on
    each replica's own examples). Documented in docs/methods/dist.md.

    Args:
        ce_weight: weight of the label cross-entropy (default 1).
        kd_weight: weight of the whole distillation term,
            `inter_weight * inter + intra_weight * intra` (default 2).
        inter_weight: weight of the `inter` term (the inter-class
            relation), times `kd_weight`; the paper's beta (default 1). Old
            name: `beta`.
        intra_weight: weight of the `intra` term (the intra-class
            relation), times `kd_weight`; the paper's gamma (default 1). Old
            name: `gamma`.
        temperature: tau, the softmax temperature (default 4, the CIFAR
            setting; the authors use 1 on ImageNet).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> distiller = kerakd.Distiller(student, kerakd.methods.get("dist"), teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights   # CE + 2 * inter + 2 * intra at tau = 4
    {'ce': 1.0, 'inter': 2.0, 'intra': 2.0}
    """

    @renamed_arguments(beta="inter_weight", gamma="intra_weight")
    def __init__(self, ce_weight=1.0, kd_weight=2.0, inter_weight=1.0, intra_weight=1.0,
                 temperature=4.0, **kwargs):
        super().__init__(**kwargs)
        check_non_negative(ce_weight=ce_weight, kd_weight=kd_weight, inter_weight=inter_weight,
                           intra_weight=intra_weight)
        check_positive(temperature=temperature)
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.inter_weight = inter_weight
        self.intra_weight = intra_weight
        self.temperature = temperature
        self.set_term_weights({
            "ce": ce_weight,
            "inter": kd_weight * inter_weight,
            "intra": kd_weight * intra_weight,
        })

    def call(self, data, training=False):
        inter, intra, row_correlation = dist_losses(
            data.student_logits, data.teacher_logits, self.temperature
        )
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "inter": inter,
                "intra": intra,
            }),
            metrics={"row_correlation": ops.stop_gradient(row_correlation)},
        )
