"""Metrics the `Distiller` reports, and their bookkeeping.

Training reports `loss` (the weighted sum), every loss term of the method by
name, the student's `accuracy`, the accuracy of each extra prediction the
method makes (`<name>_accuracy`), the method's own values, `skipped_batches`
under `nan_policy="skip_batch"`, and the metrics given to `compile`.
Validation reports the student's `loss` (= its cross-entropy `ce`) and
`accuracy`. Every tracker averages over the examples of the epoch.
"""

import keras
import tensorflow as tf
from keras import ops

from kerakd import compat
from kerakd import distribute
from kerakd import losses


class BatchMean(keras.metrics.Mean):
    """`keras.metrics.Mean` that is NaN, not 0, over no examples (an epoch
    whose every batch was skipped has no mean loss; 0 would read as perfect)."""

    def result(self):
        return ops.where(self.count > 0, super().result(), float("nan"))


def output_names(distiller, spec):
    """The names of the method's terms, extra predictions and values, read
    off one symbolic step of `distiller` (which also checks the method end to
    end): the `names` of `trackers`.

    Args:
        distiller: the Distiller being built (its networks and method are).
        spec: the method's `TapSpec`.

    Raises:
        ValueError: the method returns a term without a weight.
    """
    names = {}

    def step(images, labels, index, strong_images):
        # Its own stateless scope keeps the trace's state updates (BatchNorm
        # statistics, seeds) out of any scope Keras is building under.
        with keras.StatelessScope():
            out = distiller._method_output(images, labels, True, index,
                                           strong_images=strong_images)
            names.update(losses=list(out.losses), metrics=list(out.metrics),
                         logits=[n for n in out.logits if n != "_student"])
            # Not their weighted sum: a term without a weight fails below.
            return out.losses

    method = distiller.method
    # Tracing builds no state (everything is built) and runs nothing.
    tf.function(step, autograph=False).get_concrete_function(
        tf.TensorSpec(spec.image_shape, distiller.compute_dtype),
        tf.TensorSpec(spec.image_shape[:1], tf.int32),
        tf.TensorSpec(spec.image_shape[:1], tf.int64) if method.needs_index else None,
        (tf.TensorSpec(spec.image_shape, distiller.compute_dtype)
         if method.needs_strong_view else None),
    )
    missing = set(names["losses"]) - set(method.term_weights)
    if missing:
        raise ValueError(
            f"Method '{method.name}' returns terms {sorted(missing)} "
            "that have no weight in its `term_weights`."
        )
    return names


def trackers(names, nan_policy):
    """The trackers of a Distiller, by the attribute that holds each.

    Args:
        names: `{"losses", "logits", "metrics"}`: the names of the method's
            terms, extra predictions and values.
        nan_policy: the Distiller's; `"skip_batch"` counts skipped batches.

    Returns:
        `{"term_trackers", "accuracy_trackers", "value_trackers": {name:
        tracker}, "loss_tracker", "skipped_tracker" (or None),
        "val_ce_tracker"}`, in the order the Distiller sets them.
    """
    term_trackers = {n: BatchMean(name=n) for n in names["losses"]}
    return {
        "term_trackers": term_trackers,
        "accuracy_trackers": {
            n: BatchMean(name=n)
            for n in ["accuracy"] + [f"{p}_accuracy" for p in names["logits"]]
        },
        "value_trackers": {n: BatchMean(name=n) for n in names["metrics"]},
        "loss_tracker": BatchMean(name="loss"),
        "skipped_tracker": (keras.metrics.Sum(name="skipped_batches")
                            if nan_policy == "skip_batch" else None),
        # Validation reports the student's `ce`: one tracker per name, or Keras
        # reads the wrong one back.
        "val_ce_tracker": term_trackers.get("ce") or BatchMean(name="ce"),
    }


def set_trackers(distiller, spec):
    """Sets the `trackers` of the Distiller being built as its attributes.

    Args:
        distiller: the Distiller (its networks and method are built).
        spec: the method's `TapSpec`.
    """
    for attribute, tracker in trackers(output_names(distiller, spec),
                                       distiller.nan_policy).items():
        setattr(distiller, attribute, tracker)


def all_trackers(model):
    """Every tracker of the built Distiller `model`, as its `metrics`."""
    compiled = compat.compile_metrics(model)
    return [
        model.loss_tracker,
        *([] if model.val_ce_tracker in model.term_trackers.values() else [model.val_ce_tracker]),
        *model.term_trackers.values(),
        *model.accuracy_trackers.values(),
        *model.value_trackers.values(),
        *([model.skipped_tracker] if model.skipped_tracker else []),
        *([compiled] if compiled is not None else []),
    ]


def update_training(model, out, total, labels, finite=None):
    """Updates the training trackers of `model` after a step; a batch with
    `finite` False counts for none of them (its values may be NaN) but
    `skipped_batches`.

    Args:
        model: the Distiller.
        out: the step's `MethodOutput` (its `logits` hold the student's as
            `"_student"`).
        total: the weighted sum of the terms.
        labels: the batch's labels.
        finite: None, or whether the step's loss and gradients were finite
            (`nan_policy="skip_batch"`).

    Returns:
        The step's results, `{metric name: value}`.
    """
    if finite is not None:
        # Every replica counts the batch; their counts are summed.
        model.skipped_tracker.update_state(
            distribute.scale_for_replicas(1 - ops.cast(finite, "float32")))
    batch = ops.cast(ops.shape(labels)[0], "float32")
    weight = batch if finite is None else batch * ops.cast(finite, "float32")

    def update(tracker, value):
        if finite is not None:
            value = ops.where(finite, value, ops.zeros_like(value))
        tracker.update_state(value, sample_weight=weight)

    update(model.loss_tracker, total)
    for name, value in out.losses.items():
        update(model.term_trackers[name], value)
    student_logits = out.logits.pop("_student")
    update(model.accuracy_trackers["accuracy"], losses.accuracy(labels, student_logits))
    for name, logits in out.logits.items():
        update(model.accuracy_trackers[f"{name}_accuracy"], losses.accuracy(labels, logits))
    for name, value in out.metrics.items():
        update(model.value_trackers[name], value)
    update_compiled(model, labels, student_logits, weight / batch)
    return results(model, [
        model.loss_tracker, *model.term_trackers.values(),
        *model.accuracy_trackers.values(), *model.value_trackers.values(),
        *([model.skipped_tracker] if model.skipped_tracker else [])])


def update_validation(model, labels, logits):
    """Updates the validation trackers of `model` with the student's
    `logits` of a batch; returns the step's results."""
    ce = losses.cross_entropy(labels, logits)
    batch = ops.shape(labels)[0]
    model.loss_tracker.update_state(ce, sample_weight=batch)
    model.val_ce_tracker.update_state(ce, sample_weight=batch)
    model.accuracy_trackers["accuracy"].update_state(
        losses.accuracy(labels, logits), sample_weight=batch
    )
    update_compiled(model, labels, logits)
    return results(
        model, [model.loss_tracker, model.val_ce_tracker, model.accuracy_trackers["accuracy"]]
    )


def update_compiled(model, labels, logits, weight=None):
    """Updates the metrics given to `compile` with the student's logits
    (hard labels: a soft label counts as its largest class)."""
    compiled = compat.compile_metrics(model)
    if compiled is not None:
        if weight is not None:
            weight = weight * ops.ones_like(logits[:, 0])
        compiled.update_state(losses.hard_labels(labels), logits, weight)


def results(model, trackers):
    """`{name: result}` of `trackers` and of the compiled metrics, in the
    form Keras reduces across replicas."""
    values = {m.name: m.result() for m in trackers}
    compiled = compat.compile_metrics(model)
    if compiled is not None:
        values.update(compiled.result())
    return distribute.step_results(values)
