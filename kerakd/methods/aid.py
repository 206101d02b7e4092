"""`aid`: auxiliary middle-level distillation with multi-source matching.

Documented in `docs/methods/aid.md`.
"""

import functools

import keras
from keras import ops

from kerakd import losses
from kerakd.blocks import branches
from kerakd.methods.base import Method, MethodOutput, check_non_negative, check_positive
from kerakd.methods.feature_ops import cosine_similarity_matrix
from kerakd.methods.registry import register
from kerakd.nn import layers as nn_layers


def orthogonality(kernel):
    """`||W^T W - I||_F + ||W W^T - I||_F` (Bansal et al.'s double soft orthogonality).

    0 exactly when `W` is square and orthogonal; a `D_s x D_t` kernel with
    `D_s != D_t` has a floor of `sqrt(|D_t - D_s|)` (one of the two Gram
    matrices is rank-deficient), reached by orthonormal rows or columns. A
    Frobenius norm has no gradient at 0, so each norm is taken of
    `max(squared norm, 1e-24)`.
    """
    w = ops.cast(kernel, "float32")

    def distance(gram):
        residual = gram - ops.eye(ops.shape(gram)[0], dtype="float32")
        return ops.sqrt(ops.maximum(ops.sum(ops.square(residual)), 1e-24))

    return distance(ops.matmul(ops.transpose(w), w)) + distance(ops.matmul(w, ops.transpose(w)))


def cosine_matrix(rows, columns):
    """`A[b, k] = cos(rows[b], columns[k])` of the features in float32."""
    return cosine_similarity_matrix(
        ops.cast(rows, "float32"), ops.cast(columns, "float32"), epsilon_on="norm"
    )


@register("aid")
class AID(Method):
    """AID: branches on the student's middle stages matched to the teacher (`docs/methods/aid.md`).

    Each chosen student stage `j` gets a branch `T_j` (`branches.py` builder,
    down to the last stage's size and width, pooled to `g_j`), a classifier
    `c_j` and an adapter `W_j` (no bias) to the teacher's penultimate width;
    one projection head `P` (Dense -> ReLU -> Dense) sits on the deepest
    branch (built only when `relation_weight > 0`). With `n` the logit
    standardisation (identity when `normalize_logits` is off), `h_t`, `z_t`
    the teacher's pooled feature and logits, the terms (summed over branches)
    are:

        ce       = CE(z_s, y)
        kd       = KD_T(n(z_s), n(z_t))
        feat     = sum_j mean_{b,d} (W_j g_j - h_t)^2
        logit    = sum_j KD_T(n(c_j g_j), n(z_t))
        task     = sum_j CE(c_j g_j, y)
        relation = tau^2 mean_b KL(softmax(A_t[b] / tau) || softmax(A_s[b] / tau))
        orth     = sum_j ||W_j^T W_j - I||_F + ||W_j W_j^T - I||_F

    `A[b, k] = cos(e(view2_b), e(view1_k))` over this replica's batch, with
    `e = h_t` for the teacher and `P(g_deepest)` for the student. The second
    view is the batch rotated by a random multiple of 90 degrees, one draw
    per batch among 90, 180 and 270 (choice: never 0, which would not be a
    second view). Images that are not square keep their shape only under
    180 degrees, so they always get that rotation. The relation term costs
    one more teacher and student forward; with `relation_weight = 0` (like
    any zero-weight term, docs/methods/conventions.md) it is not computed
    and the projection head is not built.

    Branch `k` grows from tap `stage<k>` (k = stage index + 1); its accuracy
    is reported as `branch<k>_accuracy`. Branches, adapters and the
    projection head live in the method, not in the exported student.

    Args:
        stages: indices into the student's stage taps that get a branch
            (default `(0, 1)`: the first two stages, "C2 & C3").
        ce_weight: weight of the student's cross-entropy (default 1).
        kd_weight: alpha, weight of the student's KD term (default 1).
        temperature: T of the KD and logit terms (default 4).
        feat_weight: weight of the feature term (default 1).
        logit_weight: weight of the branches' logit term (default 1).
        task_weight: weight of the branches' cross-entropy (default 1).
        relation_weight: weight of the relation term (default 10).
        relation_temperature: tau (default 0.5).
        orth_weight: weight of the adapters' orthogonality (default 0.03).
        normalize_logits: standardise logits before every KD term
            (default True).
        branch_builder: branch builder name
            (`kerakd.blocks.branches.builders`, default `"separable"`).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> method = kerakd.methods.get("aid", stages=(1,))   # one branch, on stage2
    >>> distiller = kerakd.Distiller(student, method, teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 1.0, 'kd': 1.0, 'feat': 1.0, 'logit': 1.0, 'task': 1.0, 'relation': 10.0,
     'orth': 0.03}
    """

    student_taps = {"features": "stages"}
    teacher_taps = {"penultimate": "penultimate"}

    def __init__(
        self,
        stages=(0, 1),
        ce_weight=1.0,
        kd_weight=1.0,
        temperature=4.0,
        feat_weight=1.0,
        logit_weight=1.0,
        task_weight=1.0,
        relation_weight=10.0,
        relation_temperature=0.5,
        orth_weight=0.03,
        normalize_logits=True,
        branch_builder="separable",
        **kwargs,
    ):
        super().__init__(**kwargs)
        weights = {
            "ce": ce_weight, "kd": kd_weight, "feat": feat_weight,
            "logit": logit_weight, "task": task_weight,
            "relation": relation_weight, "orth": orth_weight,
        }
        check_non_negative(**{f"{name}_weight": w for name, w in weights.items()})
        check_positive(temperature=temperature, relation_temperature=relation_temperature)
        self.set_term_weights(weights)
        stages = tuple(stages)
        if (
            not stages
            or not all(isinstance(s, int) and s >= 0 for s in stages)
            or len(set(stages)) != len(stages)
        ):
            raise ValueError(
                f"`stages` must list distinct stage indices >= 0 (0 is the first "
                f"stage tap), e.g. (0, 1); got {stages}."
            )
        self.stages = tuple(sorted(stages))
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.feat_weight = feat_weight
        self.logit_weight = logit_weight
        self.task_weight = task_weight
        self.relation_weight = relation_weight
        self.relation_temperature = relation_temperature
        self.orth_weight = orth_weight
        self.normalize_logits = bool(normalize_logits)
        self.branch_builder = branches.check_builder(branch_builder)
        self.rotation_seed = keras.random.SeedGenerator()

    def build(self, spec):
        super().build(spec)
        taps = spec.student["features"]
        if self.stages[-1] >= len(taps):
            raise ValueError(
                f"`stages={self.stages}` asks for a branch on stage index "
                f"{self.stages[-1]}, but the student has {len(taps)} stage taps "
                f"(indices 0..{len(taps) - 1})."
            )
        (teacher_feature,) = spec.teacher["penultimate"]
        if len(teacher_feature) != 2:
            raise ValueError(
                "AID matches branches to the teacher's pooled penultimate feature "
                f"(B, D); the teacher tap has shape {teacher_feature}. Tap the "
                "teacher's global-pooling layer (teacher_taps={'penultimate': [name]})."
            )
        self.branches, self.adapters = [], []
        for stage in self.stages:
            name = f"branch{stage + 1}"
            inputs, features = branches.branch_features(
                self.branch_builder, taps[stage], taps[-1], name
            )
            adapter = nn_layers.linear(
                teacher_feature[-1], features.shape[-1], use_bias=False, name=f"{name}_adapter"
            )
            outputs = [
                features,
                nn_layers.linear(spec.num_classes, features.shape[-1],
                                 name=f"{name}_classifier")(features),
                adapter(features),
            ]
            self.branches.append(keras.Model(inputs, outputs, name=name))
            self.adapters.append(adapter)
        self.projection = None
        if "relation" not in self.term_weights:
            return  # the projection head serves the relation term only
        width = self.branches[-1].outputs[0].shape[-1]
        self.projection = keras.Sequential(
            [
                keras.Input((width,)),
                nn_layers.linear(width, width, name="dense1"),
                keras.layers.ReLU(name="relu"),
                nn_layers.linear(width, width, name="dense2"),
            ],
            name="projection",
        )

    def _normalize(self, logits):
        # The population deviation: AID's choice (LS divides by K - 1).
        return (losses.standardize_logits(logits, unbiased=False) if self.normalize_logits
                else logits)

    def second_view(self, images):
        """The batch rotated by 90, 180 or 270 degrees (180 for non-square images)."""
        # A half turn is two flips: `ops.rot90(k=2)` scrambles non-square
        # images in Keras 3.15's TensorFlow backend.
        def half_turn(x):
            return ops.flip(ops.flip(x, axis=1), axis=2)

        height, width = images.shape[1:3]
        if height is None or height != width:
            return half_turn(images)
        choice = keras.random.randint((), 0, 3, seed=self.rotation_seed)
        quarter, three_quarters = (
            functools.partial(ops.rot90, k=k, axes=(1, 2)) for k in (1, 3)
        )
        return ops.switch(choice, [quarter, half_turn, three_quarters], images)

    def _relation(self, data, deepest_features, training):
        if data.forward_teacher is None or data.forward_student is None:
            raise ValueError(
                "AID's relation term runs a second view through both networks, "
                "but the StepData has no forward_teacher/forward_student. Set "
                "relation_weight=0 or provide them."
            )
        view = self.second_view(data.images)
        teacher_taps, _ = data.forward_teacher(view)
        student_taps, _ = data.forward_student(view)
        view_features = self.branches[-1](
            student_taps["features"][self.stages[-1]], training=training
        )[0]
        teacher = cosine_matrix(
            teacher_taps["penultimate"][0], data.teacher["penultimate"][0]
        )
        student = cosine_matrix(
            self.projection(view_features, training=training),
            self.projection(deepest_features, training=training),
        )
        return losses.kd_loss(student, ops.stop_gradient(teacher), self.relation_temperature)

    def call(self, data, training=False):
        taps = data.student["features"]
        outputs = [
            [ops.cast(x, "float32") for x in branch(taps[stage], training=training)]
            for stage, branch in zip(self.stages, self.branches)
        ]
        features = [o[0] for o in outputs]
        branch_logits = [o[1] for o in outputs]
        adapted = [o[2] for o in outputs]
        teacher_feature = ops.stop_gradient(
            ops.cast(data.teacher["penultimate"][0], "float32")
        )
        teacher_logits = self._normalize(data.teacher_logits)
        t = self.temperature
        terms = {
            "ce": lambda: losses.cross_entropy(data.labels, data.student_logits),
            "kd": lambda: losses.kd_loss(
                self._normalize(data.student_logits), teacher_logits, t
            ),
            "feat": lambda: sum(
                ops.mean(ops.square(a - teacher_feature)) for a in adapted
            ),
            "logit": lambda: sum(
                losses.kd_loss(self._normalize(z), teacher_logits, t) for z in branch_logits
            ),
            "task": lambda: sum(losses.cross_entropy(data.labels, z) for z in branch_logits),
            "relation": lambda: self._relation(data, features[-1], training),
            "orth": lambda: sum(orthogonality(a.kernel) for a in self.adapters),
        }
        return MethodOutput(
            losses=self.weighted(terms),
            logits={f"branch{s + 1}": z for s, z in zip(self.stages, branch_logits)},
        )
