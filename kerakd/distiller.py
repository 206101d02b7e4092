"""`Distiller`: a `keras.Model` that trains a student with a distillation method."""

import keras

from kerakd import batches
from kerakd import callbacks as callbacks_lib
from kerakd import checks
from kerakd import compat
from kerakd import distribute
from kerakd import gradients as gradients_lib
from kerakd import metrics
from kerakd.methods.base import StepData, TapSpec, check_output
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
    student, ready to export: method parts (projectors, heads) live in `method`.

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
            variable before the optimizer step: PyTorch SGD's `weight_decay`,
            as the papers' recipes use (Keras optimizers' own is decoupled).
        clip_grad_norm: if positive, the loss gradient of each step (over the
            global batch, before weight decay) is scaled down to this global
            L2 norm when larger: PyTorch's `clip_grad_norm_`. Off (0) by
            default; a safeguard for methods whose large feature terms make
            early steps diverge (`docs/benchmarks.md`, SemCKD). Keras
            optimizers' `global_clipnorm` clips each replica's share alone.
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

    def __init__(self, student, method, teacher=None, student_taps=None, teacher_taps=None,
                 weight_decay=0.0, nan_policy="stop", clip_grad_norm=0.0, **kwargs):
        super().__init__(**kwargs)
        method = checks.check_arguments(method, teacher, weight_decay, nan_policy, clip_grad_norm)
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
            checks.check_pair(student, teacher)
        self._image_shape = None

    def build(self, input_shape):
        if self.built:  # built state is locked: a second build changes nothing
            return
        image_shape = tuple(batches.images_of(input_shape))
        spec = _tap_spec(self._student_net, self._teacher_net, image_shape)
        if not self.method.built:
            self.method.build(spec)
            checks.warn_if_oversized(self.method, self.student, spec)
        self._image_shape = image_shape
        metrics.set_trackers(self, spec)  # term_trackers, loss_tracker, ...

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # A private Keras hook (compat.SYMBOLIC_BUILD_HOOK): Keras all-reduces a
        # batch to read its shapes, which fails under several workers.
        strategy = compat.creation_strategy(self)
        if iterator is not None and strategy is not None:
            iterator, data_batch = None, distribute.first_local_batch(strategy, iterator)
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def get_build_config(self):
        return {"input_shape": self._image_shape} if self._image_shape else None

    def build_from_config(self, config):
        if config and config.get("input_shape"):
            self.build(tuple(config["input_shape"]))

    def call(self, inputs, training=False):
        """The student's logits (so `predict` and `evaluate` see the student)."""
        return self.student(batches.images_of(inputs), training=training)

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
        return self._student_net.features(batches.images_of(images), training)[0]

    def teacher_features(self, images):
        """The teacher's features (inference mode) at the layers the method
        taps, as `student_features`; `{}` without a teacher."""
        return (self._teacher_net.features(batches.images_of(images), False)[0]
                if self._teacher_net else {})

    def compute_loss_terms(self, x, y, training=False):
        """The weighted loss terms of one batch, `{term: weight * value}`.

        Their sum is the objective a training step minimizes (before weight
        decay); with `training=True` the networks and the method run as in a
        step (batch statistics, random masks; moving statistics and memory
        banks update), changing no trainable weight. Like
        `keras.distillation.Distiller.compute_loss`, keeping every term.

        Args:
            x: a batch of images, or `{"images", "index", "strong_images"}`
                with what the method reads (`needs_index`, `needs_strong_view`).
            y: the labels (int class ids, or soft labels).
            training: run as a training step (default: inference).

        Returns:
            A dict of scalar tensors, one per entry of `method.term_weights`.

        Example:

        >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
        >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
        >>> distiller = kerakd.Distiller(student, "kd", teacher)
        >>> images = np.random.rand(8, 16, 16, 3).astype("float32")
        >>> terms = distiller.compute_loss_terms(images, np.arange(8))
        >>> {name: float(value) for name, value in terms.items()}   # 0.1 CE (~0.1 ln 10), 0.9 KD
        {'ce': 0.2..., 'kd': 0.0...}
        """
        return gradients_lib.weighted_terms(self._batch_output(x, y, training).losses,
                                            self.method.term_weights)

    def compute_losses(self, x, y, training=False):
        """The loss of one batch and its unweighted terms, as `fit` logs them.

        `loss` is the sum of `compute_loss_terms` (weight decay adds
        `kerakd.gradients.l2_penalty`); each term is in the method's dtype.

        Args:
            x: a batch, as for `compute_loss_terms`.
            y: its labels.
            training: run as a training step (default: inference).

        Returns:
            `{"loss": scalar, term name: scalar, ...}`.

        Example:

        >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
        >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
        >>> distiller = kerakd.Distiller(student, "kd", teacher)
        >>> losses = distiller.compute_losses(np.zeros((8, 16, 16, 3), "float32"), np.arange(8))
        >>> list(losses), distiller.method.term_weights   # loss = 0.1 ce + 0.9 kd
        (['loss', 'ce', 'kd'], {'ce': 0.1, 'kd': 0.9})
        """
        out = self._batch_output(x, y, training)
        return {"loss": gradients_lib.total_loss(out.losses, self.method.term_weights),
                **out.losses}

    def _batch_output(self, x, y, training):
        images = batches.images_of(x)
        if not self.built:  # as a first fit or call would: the method is built for this batch
            self.build(tuple(images.shape))
        return self._method_output(images, y, training, batches.index_of(x),
                                   strong_images=batches.strong_images_of(x, self.method))

    def _method_output(self, images, labels, training, index=None, teacher=None,
                       strong_images=None):
        """Runs both networks (the teacher unless given) and the method."""
        data = _step_data(self._student_net, self._teacher_net, images, labels, training,
                          index, teacher, strong_images)
        out = check_output(self.method, self.method(data=data, training=training))
        out.logits["_student"] = data.student_logits
        return out

    def train_step(self, data):
        images, labels, index, strong_images = batches.unpack(data, self.method, training=True)
        if not self.built:
            self.build(tuple(images.shape))
        checks.check_batch_input(self, images, labels, self.student.outputs[0].shape[-1])
        teacher = self._teacher_net.frozen(images) if self._teacher_net else None
        variables = self.trainable_variables
        # Read before the forward pass updates it: a skipped batch puts it back.
        state = (distribute.forward_state([self.student, self.method])
                 if self.nan_policy == "skip_batch" else None)
        out, total, gradients = gradients_lib.step_gradients(
            lambda: self._method_output(images, labels, True, index, teacher, strong_images),
            self.method.term_weights, variables, self.weight_decay, self.clip_grad_norm,
            self.optimizer)
        if self.nan_policy == "stop":
            self.optimizer.apply_gradients(zip(gradients, variables))
            finite = None
        else:
            finite = distribute.apply_if_finite(self.optimizer, gradients, variables,
                                                [total, *out.losses.values()], state)
        distribute.average_moving_statistics([self.student, self.method])
        return metrics.update_training(self, out, total, labels, finite)

    def test_step(self, data):
        images, labels, _, _ = batches.unpack(data, self.method, training=False)
        if not self.built:
            self.build(tuple(images.shape))
        return metrics.update_validation(self, labels, self.student(images, training=False))

    @property
    def metrics(self):
        return metrics.all_trackers(self) if self.built else super().metrics

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`; `nan_policy="stop"` raises `NonFiniteLossError`."""
        if self.nan_policy == "stop":
            callbacks = [*(callbacks or []), callbacks_lib.StopOnNonFiniteLoss()]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def get_config(self):
        return {**super().get_config(), **_config(self)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**_from_config(config, custom_objects))


def _tap_spec(student_net, teacher_net, image_shape):
    """The `TapSpec` of the two tapped networks for batches of `image_shape`."""
    batch = image_shape[0]
    return TapSpec(
        **_sides(student_net.shapes(batch), teacher_net.shapes(batch) if teacher_net else None),
        image_shape=image_shape,
        student_tap_names=student_net.roles,
        teacher_tap_names=teacher_net.roles if teacher_net else {},
    )


def _step_data(student_net, teacher_net, images, labels, training, index, teacher,
               strong_images):
    """The `StepData` of one batch: the student's forward pass (`training`
    mode) and the teacher's, unless `teacher` is its `(taps, logits)`."""
    if teacher is None and teacher_net is not None:
        teacher = teacher_net.frozen(images)
    return StepData(
        images=images, labels=labels,
        **_sides(student_net(images, training=training), teacher),
        training=training,
        forward_student=lambda x: student_net(x, training=training),
        forward_teacher=teacher_net.frozen if teacher_net else None,
        index=index, strong_images=strong_images,
    )


def _sides(student, teacher):
    """The `student`/`teacher` fields of a `TapSpec` or `StepData` from the
    `(taps, logits)` of each network (`teacher` None: no teacher)."""
    (s_taps, s_logits), (t_taps, t_logits) = student, teacher or ({}, None)
    return {"student": s_taps, "student_logits": s_logits,
            "teacher": t_taps, "teacher_logits": t_logits}


def _config(distiller):
    """The Distiller's own arguments, serialized."""
    serialize = keras.saving.serialize_keras_object
    return dict(
        student=serialize(distiller.student),
        method=serialize(distiller.method),
        teacher=serialize(distiller.teacher) if distiller.teacher is not None else None,
        student_taps=distiller.student_taps,
        teacher_taps=distiller.teacher_taps,
        weight_decay=distiller.weight_decay,
        nan_policy=distiller.nan_policy,
        clip_grad_norm=distiller.clip_grad_norm,
    )


def _from_config(config, custom_objects):
    """`config` with its networks and method deserialized."""
    config = dict(config)
    for key in ("student", "method", "teacher"):
        if config.get(key) is not None:
            config[key] = keras.saving.deserialize_keras_object(
                config[key], custom_objects=custom_objects)
    return config
