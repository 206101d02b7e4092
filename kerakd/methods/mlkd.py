"""`mlkd`: Jin, Wang & Lin, "Multi-Level Logit Distillation" (CVPR 2023)."""

from keras import ops

from kerakd import losses
from kerakd.methods import logit_standardization as ls
from kerakd.methods.base import Method, MethodOutput, check_non_negative, check_positive
from kerakd.methods.registry import register

TEMPERATURES = (4.0, 3.0, 5.0, 2.0, 6.0)
# The strong-view KD sum of the reference evaluates its first three
# temperatures on the strong view and the others on the weak view.
STRONG_VIEW_TEMPERATURES = 3
MASKINGS = ("reference", "per_example")


def _f32(x):
    return ops.cast(x, "float32")


def median(values):
    """The median of a 1-D tensor as `np.percentile(values, 50)` gives it:
    the middle value, or the mean of the two middle values for an even count."""
    ordered = ops.sort(_f32(values))
    count = ops.shape(ordered)[0]
    low = ops.take(ordered, (count - 1) // 2)
    high = ops.take(ordered, count // 2)
    return low + 0.5 * (high - low)


def confidence_masks(teacher_logits):
    """The examples and classes MLKD's level terms keep, from the teacher.

    `conf[b] = max_k softmax(z_t)[b]` and `cconf[k] = sum_b softmax(z_t)[b, k]`;
    kept are those at or below their median (`<=`: the less confident half,
    the median itself included).

    Args:
        teacher_logits: `(B, K)` weak-view teacher logits.

    Returns:
        `(example_mask (B,), class_mask (K,), conf (B,))`, float32 stop-gradient.
    """
    probabilities = ops.softmax(ops.stop_gradient(_f32(teacher_logits)), axis=-1)
    confidence = ops.max(probabilities, axis=-1)
    class_confidence = ops.sum(probabilities, axis=0)
    example_mask = _f32(confidence <= median(confidence))
    class_mask = _f32(class_confidence <= median(class_confidence))
    return example_mask, class_mask, confidence


def kd_per_example(student_logits, teacher_logits, temperature):
    """`T^2 * KL(p_t || p_s)` of each example `(B,)` (`losses.kd_loss` before its mean)."""
    log_p_t = ops.log_softmax(ops.stop_gradient(_f32(teacher_logits)) / temperature, axis=-1)
    log_p_s = ops.log_softmax(_f32(student_logits) / temperature, axis=-1)
    return temperature * temperature * ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)


def _masked_squared_error(teacher_gram, student_gram, mask):
    """`sum (G_t - G_s)^2 / n` over all entries (`n` the side) or, with a mask
    of rows, over the kept rows and columns (`n` the kept count)."""
    error = ops.square(teacher_gram - student_gram)
    if mask is None:
        return ops.sum(error) / _f32(ops.shape(error)[0])
    return ops.sum(error * mask[:, None] * mask[None, :]) / ops.maximum(ops.sum(mask), 1.0)


def _softened(student_logits, teacher_logits, temperature):
    """`(P_s, P_t)`, each side's `softmax(z / T)` in float32; `P_t` a
    stop-gradient target."""
    p_s = ops.softmax(_f32(student_logits) / temperature, axis=-1)
    p_t = ops.softmax(ops.stop_gradient(_f32(teacher_logits)) / temperature, axis=-1)
    return p_s, p_t


def class_consistency(student_logits, teacher_logits, temperature, class_mask=None):
    """MLKD's class-level term: `sum_{k,l} (P_t^T P_t - P_s^T P_s)^2 / K`.

    `P = softmax(z / T)` is `(B, K)`, so the Grams are `K x K` over classes;
    no `T^2`. Batch-coupled (per replica).

    Args:
        student_logits, teacher_logits: `(B, K)`.
        temperature: T.
        class_mask: optional `(K,)` 0/1 classes to keep (rows and columns),
            dividing by their count instead of `K`.
    """
    p_s, p_t = _softened(student_logits, teacher_logits, temperature)
    return _masked_squared_error(ops.matmul(ops.transpose(p_t), p_t),
                                 ops.matmul(ops.transpose(p_s), p_s), class_mask)


def batch_consistency(student_logits, teacher_logits, temperature, example_mask=None):
    """MLKD's batch-level term: `sum_{i,j} (P_t P_t^T - P_s P_s^T)^2 / B`.

    The Grams are `B x B` over the replica's examples; no `T^2`.
    Batch-coupled (per replica).

    Args:
        student_logits, teacher_logits, temperature: as `class_consistency`.
        example_mask: optional `(B,)` 0/1 examples to keep (rows and
            columns), dividing by their count instead of `B`.
    """
    p_s, p_t = _softened(student_logits, teacher_logits, temperature)
    return _masked_squared_error(ops.matmul(p_t, ops.transpose(p_t)),
                                 ops.matmul(p_s, ops.transpose(p_s)), example_mask)


@register("mlkd")
class MLKD(Method):
    """Multi-level logit distillation on a weak and a strong view (docs/methods/mlkd.md).

    The student and the teacher see each example twice: the weak view
    (`data.images`, crop + flip) and a strong view (`data.strong_images`,
    plus RandAugment and Cutout), which the data pipeline provides
    (`views=("weak", "strong")`; the CLI asks for it). With `s_w, s_s, t_w,
    t_s` the logits of student and teacher on the two views, `Ts` the
    temperatures and `f_B`, `f_K` the shares of examples and classes at or
    below the teacher's median confidence:

        ce        = CE(s_w, y)                ce_strong = CE(s_s, y)
        kd        = f_B * sum_{T in Ts} KD_T(s_w, t_w)
                    + sum_{T in Ts[:3]} KD_T(s_s, t_s) + sum_{T in Ts[3:]} KD_T(s_w, t_w)
        cc        = f_K * sum_{T in Ts} class_consistency(s_w, t_w, T)
        bc        = f_B * sum_{T in Ts} batch_consistency(s_w, t_w, T)
        L = ce_weight * (ce + ce_strong) + kd_weight * kd + cc_weight * cc + bc_weight * bc

    `cc` sums a `K x K` Gram of batch sums, so its size grows as `(B / K)^2`
    with the batch `B` and the classes `K`: at the authors' CIFAR-100 batch
    of 64 it is a small share of the loss, with 10 classes and a batch of 128
    its gradient is as large as all the kd terms together. `cc_weight`
    rescales it for such datasets (docs/methods/mlkd.md).

    Args:
        ce_weight: weight of the `ce` and `ce_strong` terms, the label
            cross-entropies of both views (default 0.1).
        kd_weight: weight of the `kd`, `cc` and `bc` terms (default 0.9; 9 with LS).
        temperatures: the temperatures `Ts` (default 4, 3, 5, 2, 6); the
            first is replaced by `base_temperature`.
        masking: `"reference"` (default: the authors' code, where the
            confidence masks only scale already-averaged terms by `f_B`,
            `f_K`) or `"per_example"` (the kd term averages the kept
            examples' KL, cc and bc keep only the kept classes' / examples'
            rows and columns).
        logit_standardization: standardise both logits per example in the
            instance-level KD terms (LS; default False); cc, bc and the
            confidences read the raw logits.
        base_temperature: the first temperature `T0` (default: the first of
            `temperatures`, 4; 2 with LS).
        cc_weight: weight of the `cc` term (default: `kd_weight`, as the
            authors' code weights it).
        bc_weight: weight of the `bc` term (default: `kd_weight`, likewise).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> method = kerakd.methods.get("mlkd")
    >>> distiller = kerakd.Distiller(student, method, teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 0.1, 'ce_strong': 0.1, 'kd': 0.9, 'cc': 0.9, 'bc': 0.9}
    >>> weak = np.random.rand(8, 16, 16, 3).astype("float32")
    >>> x = {"images": weak, "strong_images": weak[:, ::-1]}   # two views of each image
    >>> sorted(distiller.compute_loss_terms(x, np.arange(8)))
    ['bc', 'cc', 'ce', 'ce_strong', 'kd']

    `kerakd.data.load("cifar100", 64, views=("weak", "strong"))` gives such
    batches, with RandAugment and Cutout for the strong view.
    """

    needs_strong_view = True

    def __init__(self, ce_weight=0.1, kd_weight: float | None = None, temperatures=TEMPERATURES,
                 masking="reference", logit_standardization=False,
                 base_temperature: float | None = None, cc_weight: float | None = None,
                 bc_weight: float | None = None, **kwargs):
        super().__init__(**kwargs)
        temperatures = [float(t) for t in temperatures]
        if not temperatures:
            raise ValueError("`temperatures` must list at least one temperature, got none.")
        kd_weight = ls.preset(kd_weight, 0.9, 9.0, logit_standardization)
        base_temperature = ls.preset(base_temperature, temperatures[0], 2.0,
                                     logit_standardization)
        # The reference weights the three level terms alike.
        cc_weight = kd_weight if cc_weight is None else cc_weight
        bc_weight = kd_weight if bc_weight is None else bc_weight
        check_non_negative(ce_weight=ce_weight, kd_weight=kd_weight, cc_weight=cc_weight,
                           bc_weight=bc_weight)
        check_positive(base_temperature=base_temperature, **{
            f"temperatures[{i}]": t for i, t in enumerate(temperatures)})
        if masking not in MASKINGS:
            raise ValueError(f"`masking` must be one of {MASKINGS}, got '{masking}'.")
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.temperatures = temperatures
        self.masking = masking
        self.logit_standardization = bool(logit_standardization)
        self.base_temperature = float(base_temperature)
        self.cc_weight = float(cc_weight)
        self.bc_weight = float(bc_weight)
        self.set_term_weights({"ce": ce_weight, "ce_strong": ce_weight, "kd": kd_weight,
                               "cc": cc_weight, "bc": bc_weight})

    @property
    def used_temperatures(self):
        """The temperatures the terms use: `base_temperature`, then the rest."""
        return [self.base_temperature, *self.temperatures[1:]]

    def call(self, data, training=False):
        if data.strong_images is None:
            raise ValueError(
                f"Method '{self.name}' reads a strong view of each example, but "
                "the step has none (StepData.strong_images is None): feed "
                "({'images': weak, 'strong_images': strong}, labels) batches.")
        _, s_s = data.forward_student(data.strong_images)
        _, t_s = data.forward_teacher(data.strong_images)
        s_w, t_w = data.student_logits, data.teacher_logits
        example_mask, class_mask, confidence = confidence_masks(t_w)
        f_b, f_k = ops.mean(example_mask), ops.mean(class_mask)

        # The instance-level KD terms read standardised logits under LS.
        kd_logits = [s_w, t_w, s_s, t_s]
        if self.logit_standardization:
            kd_logits = [losses.standardize_logits(z) for z in kd_logits]
        kd_s_w, kd_t_w, kd_s_s, kd_t_s = kd_logits

        temperatures = self.used_temperatures
        weak_kd = [losses.kd_loss(kd_s_w, kd_t_w, t) for t in temperatures]
        strong_sum = (
            sum(losses.kd_loss(kd_s_s, kd_t_s, t)
                for t in temperatures[:STRONG_VIEW_TEMPERATURES])
            + sum(weak_kd[STRONG_VIEW_TEMPERATURES:], 0.0))
        if self.masking == "reference":
            kept_kd = f_b * sum(weak_kd)
            cc = f_k * sum(class_consistency(s_w, t_w, t) for t in temperatures)
            bc = f_b * sum(batch_consistency(s_w, t_w, t) for t in temperatures)
        else:
            kept = ops.maximum(ops.sum(example_mask), 1.0)
            kept_kd = sum(ops.sum(example_mask * kd_per_example(kd_s_w, kd_t_w, t)) / kept
                          for t in temperatures)
            cc = sum(class_consistency(s_w, t_w, t, class_mask) for t in temperatures)
            bc = sum(batch_consistency(s_w, t_w, t, example_mask) for t in temperatures)
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, s_w),
                "ce_strong": losses.cross_entropy(data.labels, s_s),
                "kd": kept_kd + strong_sum,
                "cc": cc,
                "bc": bc,
            }),
            metrics={
                "f_B": f_b,
                "f_K": f_k,
                "teacher_confidence": ops.mean(confidence),
                **ls.scale_metrics(data, self.logit_standardization),
            },
        )
