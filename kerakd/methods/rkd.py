"""`rkd`: Park et al., "Relational Knowledge Distillation" (CVPR 2019)."""

import keras
from keras import ops

from kerakd import losses
from kerakd.methods.base import Method, MethodOutput, check_non_negative, check_one_pair
from kerakd.methods.feature_ops import cosine_similarity_matrix, pairwise_distances
from kerakd.methods.registry import register


def _flat_f32(x):
    return ops.reshape(ops.cast(x, "float32"), (ops.shape(x)[0], -1))


def _normalized_distances(x):
    # Distances divided by the mean of the non-zero ones (RepDistiller).
    d = pairwise_distances(x)
    count = ops.sum(ops.cast(d > 0, d.dtype))
    return d / (ops.sum(d) / count)


def _angles(x):
    # angles[i, j, k] = cos(e_j - e_i, e_k - e_i), for every anchor i.
    return cosine_similarity_matrix(x[None, :, :] - x[:, None, :])


def rkd_distance_loss(student, teacher):
    """Huber loss between mean-normalised distance matrices `(B, B)`."""
    s = _normalized_distances(_flat_f32(student))
    t = ops.stop_gradient(_normalized_distances(_flat_f32(teacher)))
    return keras.losses.huber(ops.reshape(t, (-1,)), ops.reshape(s, (-1,)), delta=1.0)


def rkd_angle_loss(student, teacher):
    """Huber loss between the triplet-angle tensors `(B, B, B)`."""
    s = _angles(_flat_f32(student))
    t = ops.stop_gradient(_angles(_flat_f32(teacher)))
    return keras.losses.huber(ops.reshape(t, (-1,)), ops.reshape(s, (-1,)), delta=1.0)


@register("rkd")
class RKD(Method):
    """`ce_weight * CE + distance_weight * L_d + angle_weight * L_a`.

    Both terms compare relations between the examples of the (per-replica)
    batch: `L_d` the pairwise distances, each matrix divided by the mean of
    its non-zero entries; `L_a` the cosines of the angles `(e_j - e_i,
    e_k - e_i)`. Each is a Huber (smooth-L1, delta 1) loss averaged over the
    entries, with the teacher side a stop-gradient target, as in
    RepDistiller's `RKDLoss` on the penultimate embeddings (`feat[-1]`).

    Args:
        ce_weight: weight of the `ce` term (default 1).
        distance_weight: weight of the `distance` term (default 25).
        angle_weight: weight of the `angle` term (default 50).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> distiller = kerakd.Distiller(student, kerakd.methods.get("rkd"), teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 1.0, 'distance': 25.0, 'angle': 50.0}
    >>> images = np.random.rand(8, 16, 16, 3).astype("float32")
    >>> {name: tuple(f.shape) for name, f in distiller.student_features(images).items()}
    {'pool': (8, 64)}
    >>> {name: tuple(f.shape) for name, f in distiller.teacher_features(images).items()}
    {'pool': (8, 256)}
    """

    student_taps = {"features": "penultimate"}
    teacher_taps = {"features": "penultimate"}

    def __init__(self, ce_weight=1.0, distance_weight=25.0, angle_weight=50.0, **kwargs):
        super().__init__(**kwargs)
        check_non_negative(
            ce_weight=ce_weight, distance_weight=distance_weight, angle_weight=angle_weight
        )
        self.ce_weight = ce_weight
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight
        self.set_term_weights({
            "ce": ce_weight,
            "distance": distance_weight,
            "angle": angle_weight,
        })

    def build(self, spec):
        super().build(spec)
        check_one_pair(spec, "RKD")

    def call(self, data, training=False):
        (f_s,), (f_t,) = data.student["features"], data.teacher["features"]
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "distance": rkd_distance_loss(f_s, f_t),
                "angle": rkd_angle_loss(f_s, f_t),
            })
        )
