"""`Distiller`: a `keras.Model` that trains a student with a distillation method."""

import keras
import tensorflow as tf
from keras import ops

from kerakd import callbacks as callbacks_lib
from kerakd import checks
from kerakd import compat
from kerakd import distribute
from kerakd import losses
from kerakd import methods as methods_lib
from kerakd import metrics
from kerakd.callbacks import NAN_POLICIES
from kerakd.methods.base import Method, MethodOutput, StepData, TapSpec
from kerakd.taps import TappedModel


@keras.saving.register_keras_serializable(package="kerakd")
class Distiller(keras.Model):
    """Trains `student` from a frozen `teacher` (or from itself) with `method`.

    Each step runs the teacher once (inference mode, outside the gradient
    tape) and the student once (training mode), each as ONE functional model
    that also returns the taps the method reads; the method turns them into
    loss terms. Every term is reported as its own metric, next to `loss` (the
    weighted sum) and the student's `accuracy`. Validation reports the
    student's `loss` (= its cross-entropy) and `accuracy`.

    The teacher is set `trainable = False`. `distiller.student` is the plain
    student, ready to export: method parts (projectors, heads, self-teachers)
    live in `distiller.method`, not in the student.

    Args:
        student: functional Keras model `images -> logits`.
        method: a `kerakd.methods.Method` or a registered method name.
        teacher: functional Keras model `images -> logits`, or None for
            self-distillation methods.
        student_taps: overrides the method's default student taps: a list of
            layer names or a tap kind (for a method with one tap role), or a
            dict `{role: names}`.
        teacher_taps: the same for the teacher.
        weight_decay: L2 coefficient added to the gradient of every trainable
            variable (student and method) before the optimizer step: PyTorch's
            SGD `weight_decay`, which the papers' recipes use. Keras optimizers'
            own `weight_decay` is decoupled (AdamW-style) and differs.
        clip_grad_norm: if positive, the loss gradient of each step (over the
            global batch, before weight decay is added) is scaled down to this
            global L2 norm when it is larger: PyTorch's
            `clip_grad_norm_` before `optimizer.step()`. Off (0) by default;
            an opt-in safeguard for methods whose large feature terms make
            early steps diverge at high learning rates
            (`docs/benchmarks.md`, SemCKD). Keras optimizers' own
            `global_clipnorm` clips each replica's share separately.
        nan_policy: what a NaN or Inf loss term does in training: `"stop"`
            (`fit` raises `NonFiniteLossError` naming the term and the step)
            or `"skip_batch"` (that batch changes no weight and no optimizer
            state; the `skipped_batches` metric counts such batches).

    Example:

    ```python
    teacher = keras.models.load_model("teacher.keras")
    student = kerakd.models.get("resnet8x4", num_classes=100)
    distiller = kerakd.Distiller(student, kerakd.methods.get("kd"), teacher)
    distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    distiller.fit(train_ds, validation_data=val_ds, epochs=240)
    kerakd.models.core_keras(distiller.student).save("student.keras")  # loads without kerakd
    ```
    """

    def __init__(
        self,
        student,
        method,
        teacher=None,
        student_taps=None,
        teacher_taps=None,
        weight_decay=0.0,
        nan_policy="stop",
        clip_grad_norm=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"`nan_policy` must be one of {NAN_POLICIES}, got '{nan_policy}'.")
        if isinstance(method, str):
            method = methods_lib.get(method)
        if not isinstance(method, Method):
            raise TypeError(
                f"`method` must be a kerakd Method or a method name "
                f"{methods_lib.available()}; got {type(method).__name__}."
            )
        checks.check_teacher(f"method '{method.name}'", method.requires_teacher,
                             teacher is not None)
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}.")
        if clip_grad_norm < 0:
            raise ValueError(f"`clip_grad_norm` must be >= 0 (0: off), got {clip_grad_norm}.")
        checks.check_logits_model(student, "student")
        self.student = student
        self.method = method
        self.teacher = teacher
        self.student_taps = student_taps
        self.teacher_taps = teacher_taps
        self.weight_decay = float(weight_decay)
        self.nan_policy = nan_policy
        self.clip_grad_norm = float(clip_grad_norm)
        self._student_net = TappedModel.of(student, method.student_taps, student_taps, "student")
        self._teacher_net = None
        if teacher is not None:
            checks.check_logits_model(teacher, "teacher")
            teacher.trainable = False
            self._teacher_net = TappedModel.of(teacher, method.teacher_taps, teacher_taps, "teacher")
            self._check_pair(student, teacher)
        self._image_shape = None

    @staticmethod
    def _check_pair(student, teacher):
        s_in, t_in = student.inputs[0].shape[1:], teacher.inputs[0].shape[1:]
        if None not in s_in and None not in t_in and tuple(s_in) != tuple(t_in):
            raise ValueError(
                f"Teacher input shape {tuple(t_in)} differs from the student's "
                f"{tuple(s_in)}; both must read the same images."
            )
        s_k, t_k = student.outputs[0].shape[-1], teacher.outputs[0].shape[-1]
        if s_k != t_k:
            raise ValueError(
                f"Teacher predicts {t_k} classes and the student {s_k}; they "
                "must have the same classes."
            )

    # -- building ---------------------------------------------------------

    def build(self, input_shape):
        if self.built:  # built state is locked: a second build changes nothing
            return
        image_shape = tuple(self._images_of(input_shape))
        batch = image_shape[0]
        s_taps, s_logits = self._student_net.shapes(batch)
        t_taps, t_logits = {}, None
        if self._teacher_net is not None:
            t_taps, t_logits = self._teacher_net.shapes(batch)
        spec = TapSpec(
            student=s_taps,
            teacher=t_taps,
            student_logits=s_logits,
            teacher_logits=t_logits,
            image_shape=image_shape,
            student_tap_names=self._student_net.roles,
            teacher_tap_names=self._teacher_net.roles if self._teacher_net else {},
        )
        if not self.method.built:
            self.method.build(spec)
            checks.warn_if_oversized(self.method, self.student, spec)
        self._image_shape = image_shape
        names = self._output_names(spec)
        self.term_trackers = {n: metrics.BatchMean(name=n) for n in names["losses"]}
        self.accuracy_trackers = {
            n: metrics.BatchMean(name=n)
            for n in ["accuracy"] + [f"{p}_accuracy" for p in names["logits"]]
        }
        self.value_trackers = {n: metrics.BatchMean(name=n) for n in names["metrics"]}
        self.loss_tracker = metrics.BatchMean(name="loss")
        self.skipped_tracker = (keras.metrics.Sum(name="skipped_batches")
                                if self.nan_policy == "skip_batch" else None)
        # Validation reports the student's `ce`: one tracker per name, or Keras
        # reads the wrong one back.
        self.val_ce_tracker = self.term_trackers.get("ce") or metrics.BatchMean(name="ce")

    def _output_names(self, spec):
        """Names of the method's terms, extra predictions and metrics, read
        off one symbolic step (which also checks the method end to end)."""
        names = {}

        def step(images, labels, index, strong_images):
            # Its own stateless scope keeps the trace's state updates (BatchNorm
            # statistics, seeds) out of any scope Keras is building under.
            with keras.StatelessScope():
                out = self._method_output(images, labels, True, index,
                                          strong_images=strong_images)
                names.update(losses=list(out.losses), metrics=list(out.metrics),
                              logits=[n for n in out.logits if n != "_student"])
                return self._total_loss(out.losses)

        # Tracing builds no state (everything is built) and runs nothing.
        tf.function(step, autograph=False).get_concrete_function(
            tf.TensorSpec(spec.image_shape, self.compute_dtype),
            tf.TensorSpec(spec.image_shape[:1], tf.int32),
            tf.TensorSpec(spec.image_shape[:1], tf.int64) if self.method.needs_index else None,
            (tf.TensorSpec(spec.image_shape, self.compute_dtype)
             if self.method.needs_strong_view else None),
        )
        missing = set(names["losses"]) - set(self.method.term_weights)
        if missing:
            raise ValueError(
                f"Method '{self.method.name}' returns terms {sorted(missing)} "
                "that have no weight in its `term_weights`."
            )
        return names

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # A private Keras hook (compat.SYMBOLIC_BUILD_HOOK). Keras all-reduces
        # a whole distributed batch to read its shapes, which fails under
        # MultiWorkerMirroredStrategy; the first local replica's share has
        # the shapes a Distiller is built from (the per-replica batch).
        strategy = compat.creation_strategy(self)
        if iterator is not None and strategy is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v,
                    next(batches),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @staticmethod
    def _images_of(x):
        return x["images"] if isinstance(x, dict) else x

    def get_build_config(self):
        return {"input_shape": self._image_shape} if self._image_shape else None

    def build_from_config(self, config):
        if config and config.get("input_shape"):
            self.build(tuple(config["input_shape"]))

    # -- forward ----------------------------------------------------------

    def call(self, inputs, training=False):
        """The student's logits (so `predict` and `evaluate` see the student)."""
        return self.student(self._images_of(inputs), training=training)

    def student_features(self, images, training=False):
        """The student's features at the layers the method taps.

        Args:
            images: a batch `(B, H, W, C)`.
            training: run in training mode (BatchNorm batch statistics).

        Returns:
            `{layer name: (B, ...) features}`, in tap order.

        Example:

        >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
        >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
        >>> distiller = kerakd.Distiller(student, "at", teacher)   # taps the stages
        >>> images = np.random.rand(8, 16, 16, 3).astype("float32")
        >>> features = distiller.student_features(images)
        >>> list(features), tuple(features["stage1"].shape)
        (['stage1', 'stage2', 'stage3'], (8, 16, 16, 16))
        """
        return self._student_net.features(self._images_of(images), training)[0]

    def teacher_features(self, images):
        """The teacher's features (inference mode) at the layers the method
        taps, as `student_features`; `{}` without a teacher."""
        if self._teacher_net is None:
            return {}
        return self._teacher_net.features(self._images_of(images), False)[0]

    def compute_loss_terms(self, x, y, training=False):
        """The weighted loss terms of one batch, `{term: weight * value}`.

        Their sum is the objective a training step minimizes (before weight
        decay); with `training=True` the networks and the method run as in a
        step (BatchNorm batch statistics, random masks; moving statistics and
        memory banks update as in a step), without changing a trainable
        weight. Like `keras.distillation.Distiller.compute_loss`, but
        keeping every term by name.

        Args:
            x: a batch of images, or `{"images", "index"}` for methods that
                read dataset indices, `{"images", "strong_images"}` for
                methods that read a strong view.
            y: the labels (int class ids, or soft labels).
            training: run as a training step (default: inference).

        Returns:
            A dict of scalar tensors, one per entry of `method.term_weights`.

        Example:

        >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
        >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
        >>> distiller = kerakd.Distiller(student, "kd", teacher)
        >>> distiller.build((8, 16, 16, 3))
        >>> images = np.random.rand(8, 16, 16, 3).astype("float32")
        >>> labels = np.arange(8)
        >>> terms = distiller.compute_loss_terms(images, labels)
        >>> {name: float(value) for name, value in terms.items()}   # 0.1 CE (~0.1 ln 10), 0.9 KD
        {'ce': 0.2..., 'kd': 0.0...}
        """
        index = x.get("index") if isinstance(x, dict) else None
        strong_images = self._strong_images_of(x)
        out = self._method_output(self._images_of(x), y, training, index,
                                  strong_images=strong_images)
        return {name: ops.cast(self.method.term_weights[name], "float32") * value
                for name, value in out.losses.items()}

    def _forward_teacher(self, images):
        taps, logits = self._teacher_net(images, training=False)
        return keras.tree.map_structure(ops.stop_gradient, (taps, logits))

    def _strong_images_of(self, x):
        """The batch's strong view, or None; a method that needs one and gets
        none is told how to feed it."""
        strong_images = x.get("strong_images") if isinstance(x, dict) else None
        if strong_images is None and self.method.needs_strong_view:
            raise ValueError(
                f"Method '{self.method.name}' trains on two views of each example: "
                "feed ({'images': weak, 'strong_images': strong}, labels) batches "
                "(kerakd.data pipelines do with views=('weak', 'strong'); "
                "kerakd-train does it by itself)."
            )
        return strong_images

    def _method_output(self, images, labels, training, index=None, teacher=None,
                       strong_images=None):
        """Runs both networks (the teacher unless given) and the method."""
        if teacher is None and self._teacher_net is not None:
            teacher = self._forward_teacher(images)
        t_taps, t_logits = teacher if teacher is not None else ({}, None)
        s_taps, s_logits = self._student_net(images, training=training)
        data = StepData(
            images=images,
            labels=labels,
            student=s_taps,
            student_logits=s_logits,
            teacher=t_taps,
            teacher_logits=t_logits,
            training=training,
            forward_student=lambda x: self._student_net(x, training=training),
            forward_teacher=self._forward_teacher if self._teacher_net else None,
            index=index,
            strong_images=strong_images,
        )
        out = self.method(data=data, training=training)
        if not isinstance(out, MethodOutput):
            raise TypeError(
                f"Method '{self.method.name}'.call must return a MethodOutput, "
                f"got {type(out).__name__}."
            )
        out.logits["_student"] = s_logits
        return out

    def _total_loss(self, terms):
        return sum(
            ops.cast(self.method.term_weights[name], "float32") * value
            for name, value in terms.items()
        )

    def _clipped_with_weight_decay(self, gradients, variables):
        """Per-replica gradients of the clipped global-batch loss gradient
        plus weight decay: `(clip(sum over replicas) + wd * w) / replicas`,
        which the optimizer's sum over replicas turns into PyTorch's step."""
        scale = self._loss_scale()
        replicas = distribute.num_replicas()
        present = [i for i, g in enumerate(gradients) if g is not None]
        summed = distribute.sum_over_replicas([gradients[i] for i in present])
        clipped, _ = tf.clip_by_global_norm(summed, self.clip_grad_norm * scale)
        gradients = list(gradients)
        for i, g in zip(present, clipped):
            decay = self.weight_decay * ops.cast(variables[i], g.dtype) * scale
            gradients[i] = (g + decay) / replicas
        return gradients

    def _loss_scale(self):
        # Under mixed_float16 the gradients carry the loss scale until the
        # LossScaleOptimizer removes it.
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            return ops.cast(self.optimizer.scale_loss(1.0), "float32")
        return 1.0

    def _l2_penalty(self, variables):
        if not self.weight_decay:
            return 0.0
        return 0.5 * self.weight_decay * sum(
            ops.sum(ops.square(ops.cast(v, "float32"))) for v in variables
        )

    # -- steps ------------------------------------------------------------

    def _unpack(self, data, training):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError(
                "The Distiller trains on (images, labels) batches; the dataset "
                "yields no labels."
            )
        index = x.get("index") if isinstance(x, dict) else None
        if training and index is None and self.method.needs_index:
            raise ValueError(
                f"Method '{self.method.name}' reads the dataset index of each "
                "example: feed ({'images': x, 'index': i}, labels) batches "
                "(kerakd.data pipelines do with with_index=True)."
            )
        strong_images = self._strong_images_of(x) if training else None
        return self._images_of(x), y, index, strong_images

    def _ensure_built(self, images):
        if not self.built:
            self.build(tuple(images.shape))

    def train_step(self, data):
        images, labels, index, strong_images = self._unpack(data, training=True)
        self._ensure_built(images)
        checks.check_batch_input(self, images, labels, self.student.outputs[0].shape[-1])
        teacher = self._forward_teacher(images) if self._teacher_net else None
        variables = self.trainable_variables
        # What the forward pass itself updates (BatchNorm statistics, memory
        # banks): a skipped batch puts it back, to leave no trace at all.
        forward_state = []
        if self.nan_policy == "skip_batch":
            forward_state = [*self.student.non_trainable_variables,
                             *self.method.non_trainable_variables]
        state_before = [ops.copy(v) for v in forward_state]  # read now, not at use
        with tf.GradientTape() as tape:
            out = self._method_output(images, labels, True, index, teacher, strong_images)
            total = self._total_loss(out.losses)
            # Clipping reads the loss gradient alone; weight decay comes after.
            objective = total if self.clip_grad_norm else total + self._l2_penalty(variables)
            objective = self.optimizer.scale_loss(
                distribute.scale_for_replicas(objective)
            )
        gradients = tape.gradient(objective, variables)
        if self.clip_grad_norm:
            gradients = self._clipped_with_weight_decay(gradients, variables)
        if self.nan_policy == "stop":
            self.optimizer.apply_gradients(zip(gradients, variables))
            self._synchronize_moving_statistics()
            return self._update_train_metrics(out, total, labels)
        finite = distribute.on_every_replica(distribute.all_finite(
            [total, *out.losses.values(), *(g for g in gradients if g is not None)]))
        distribute.apply_if(finite, lambda: self.optimizer.apply_gradients(zip(gradients, variables)))
        for variable, before in zip(forward_state, state_before):
            variable.assign(ops.where(finite, variable, before))
        self._synchronize_moving_statistics()
        # Every replica counts the batch; their counts are summed.
        self.skipped_tracker.update_state(
            distribute.scale_for_replicas(1 - ops.cast(finite, "float32")))
        return self._update_train_metrics(out, total, labels, finite)

    def _synchronize_moving_statistics(self):
        """Averages the BatchNorm moving statistics of the student and the
        method over the replicas after a step.

        Each replica normalizes with its own batch statistics (conventions:
        DDP without SyncBN), but Keras keeps a copy of every moving statistic
        per replica, which would drift apart (DDP broadcasts rank 0's): the
        exported student would keep one replica's, and evaluation under the
        strategy would read a mixture. One all-reduce of a few vectors.
        """
        statistics = [v for v in (*self.student.non_trainable_variables,
                                  *self.method.non_trainable_variables)
                      if v.name in ("moving_mean", "moving_variance")]
        distribute.average_over_replicas(statistics)

    def _update_train_metrics(self, out, total, labels, finite=None):
        """Updates the training trackers; a batch with `finite` False counts
        for none of them (its values may be NaN)."""
        batch = ops.cast(ops.shape(labels)[0], "float32")
        weight = batch if finite is None else batch * ops.cast(finite, "float32")

        def update(tracker, value):
            if finite is not None:
                value = ops.where(finite, value, ops.zeros_like(value))
            tracker.update_state(value, sample_weight=weight)

        update(self.loss_tracker, total)
        for name, value in out.losses.items():
            update(self.term_trackers[name], value)
        student_logits = out.logits.pop("_student")
        update(self.accuracy_trackers["accuracy"], losses.accuracy(labels, student_logits))
        for name, logits in out.logits.items():
            update(self.accuracy_trackers[f"{name}_accuracy"], losses.accuracy(labels, logits))
        for name, value in out.metrics.items():
            update(self.value_trackers[name], value)
        self._update_compile_metrics(labels, student_logits, weight / batch)
        trackers = [self.loss_tracker, *self.term_trackers.values(),
                    *self.accuracy_trackers.values(), *self.value_trackers.values(),
                    *([self.skipped_tracker] if self.skipped_tracker else [])]
        return self._results(trackers)

    def test_step(self, data):
        images, labels, _, _ = self._unpack(data, training=False)
        self._ensure_built(images)
        logits = self.student(images, training=False)
        ce = losses.cross_entropy(labels, logits)
        batch = ops.shape(labels)[0]
        self.loss_tracker.update_state(ce, sample_weight=batch)
        self.val_ce_tracker.update_state(ce, sample_weight=batch)
        self.accuracy_trackers["accuracy"].update_state(
            losses.accuracy(labels, logits), sample_weight=batch
        )
        self._update_compile_metrics(labels, logits)
        return self._results(
            [self.loss_tracker, self.val_ce_tracker, self.accuracy_trackers["accuracy"]]
        )

    def _update_compile_metrics(self, labels, logits, weight=None):
        compiled = compat.compile_metrics(self)
        if compiled is not None:
            if weight is not None:
                weight = weight * ops.ones_like(logits[:, 0])
            compiled.update_state(losses.hard_labels(labels), logits, weight)

    def _results(self, trackers):
        results = {m.name: m.result() for m in trackers}
        if compat.compile_metrics(self) is not None:
            results.update(compat.compile_metrics(self).result())
        return distribute.step_results(results)

    @property
    def metrics(self):
        if not self.built:
            return super().metrics
        return [
            self.loss_tracker,
            *([] if self.val_ce_tracker in self.term_trackers.values() else [self.val_ce_tracker]),
            *self.term_trackers.values(),
            *self.accuracy_trackers.values(),
            *self.value_trackers.values(),
            *([self.skipped_tracker] if self.skipped_tracker else []),
            *([compat.compile_metrics(self)] if compat.compile_metrics(self) is not None else []),
        ]

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`; with `nan_policy="stop"` it raises
        `NonFiniteLossError` after the first batch with a NaN or Inf loss."""
        if self.nan_policy == "stop":
            callbacks = [*(callbacks or []), callbacks_lib.StopOnNonFiniteLoss()]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    # -- saving -----------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            student=serialize(self.student),
            method=serialize(self.method),
            teacher=serialize(self.teacher) if self.teacher is not None else None,
            student_taps=self.student_taps,
            teacher_taps=self.teacher_taps,
            weight_decay=self.weight_decay,
            nan_policy=self.nan_policy,
            clip_grad_norm=self.clip_grad_norm,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        for key in ("student", "method", "teacher"):
            if config.get(key) is not None:
                config[key] = deserialize(config[key], custom_objects=custom_objects)
        return cls(**config)
