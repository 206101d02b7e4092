"""Checks of what a `Distiller` is given: the networks, the method's size, the batches.

Each names the problem and the fix; nothing is silently wrong.
"""

import math
import warnings
import weakref

import keras
import tensorflow as tf

from kerakd import compat
from kerakd import methods as methods_lib
from kerakd.callbacks import NAN_POLICIES
from kerakd.methods.base import Method
from kerakd.taps import check_tappable
from kerakd.teacher_check import check_teacher


def _logits_only_methods():
    """Registered methods that read no tap of either network (their
    `student_taps` and `teacher_taps` are empty): they need logits alone."""
    return [
        name for name in methods_lib.available()
        if not getattr(methods_lib.registry.factory(name), "student_taps", None)
        and not getattr(methods_lib.registry.factory(name), "teacher_taps", None)
    ]


def check_logits_model(model, side):
    """Checks that `model` is a functional (or Sequential) `images -> logits` model.

    Args:
        model: the student or the teacher.
        side: `"student"` or `"teacher"`, for the messages.

    Raises:
        ValueError: `model` is subclassed or an unbuilt Sequential (the
            message says how to build it functionally), has several outputs,
            or ends in a softmax.
    """
    check_tappable(model, f"The {side} '{getattr(model, 'name', model)}'",
                   _logits_only_methods())
    if len(model.outputs) != 1:
        raise ValueError(
            f"The {side} must have exactly one output (the logits); "
            f"'{model.name}' has {len(model.outputs)}."
        )
    layer = _output_operation(model)
    if _is_softmax(layer):
        raise ValueError(
            f"The {side} '{model.name}' ends in a softmax (its output layer "
            f"'{getattr(layer, 'name', layer)}', a {type(layer).__name__}); "
            "distillation needs logits. Rebuild it without the softmax: drop a "
            "final Softmax or Activation('softmax') layer, or give the last Dense "
            "activation=None."
        )


def check_arguments(method, teacher, weight_decay, nan_policy, clip_grad_norm):
    """Checks the `Distiller`'s arguments (see its Args); returns its method
    (a method name is looked up).

    Raises:
        ValueError: a bad value, or a teacher given to a method without one
            (or none to a method with one).
        TypeError: `method` is no kerakd Method nor a method name.
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"`nan_policy` must be one of {NAN_POLICIES}, got '{nan_policy}'.")
    if isinstance(method, str):
        method = methods_lib.get(method)
    if not isinstance(method, Method):
        raise TypeError(
            f"`method` must be a kerakd Method or a method name "
            f"{methods_lib.available()}; got {type(method).__name__}."
        )
    check_teacher(f"method '{method.name}'", method.requires_teacher, teacher is not None)
    if weight_decay < 0:
        raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}.")
    if clip_grad_norm < 0:
        raise ValueError(f"`clip_grad_norm` must be >= 0 (0: off), got {clip_grad_norm}.")
    return method


def check_pair(student, teacher):
    """Checks that `student` and `teacher` read the same images and predict
    the same classes.

    Raises:
        ValueError: their input shapes or class counts differ.
    """
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


def _output_operation(model):
    """The layer (or op) that makes `model`'s output, looked for inside nested
    functional or Sequential models; None if the graph does not tell."""
    try:
        operation = compat.output_operation(model.outputs[0])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    if isinstance(operation, keras.Model) and operation is not model:
        return _output_operation(operation) or operation
    return operation


def _is_softmax(layer):
    """Whether `layer` outputs probabilities: a `Softmax` layer (or the
    `keras.ops.softmax` op), or any layer with a softmax activation."""
    return (type(layer).__name__ == "Softmax"
            or getattr(layer, "activation", None) is keras.activations.softmax)


OVERSIZED_METHOD_RATIO = 10


def _parameter_count(variables):
    return sum(math.prod(v.shape) for v in variables)


def _describe_taps(names_by_role, shapes_by_role):
    """`"name (C channels), ..."` of a network's taps, each layer once."""
    channels = {}
    for role, names in names_by_role.items():
        for name, shape in zip(names, shapes_by_role.get(role, [])):
            channels.setdefault(name, shape[-1])
    return ", ".join(f"{n} ({c} channels)" for n, c in channels.items()) or "none"


def warn_if_oversized(method, student, spec):
    """Warns once if the method's trainable parts outgrow the student
    `OVERSIZED_METHOD_RATIO` times: they grow with the channels of the taps
    they read, so a wide tap (MobileNetV2's 1280-channel `out_relu`) can
    silently build a module far larger than the network it trains.

    Args:
        method: the method, just built.
        student: the student model.
        spec: the `TapSpec` the method was built from.
    """
    method_count = _parameter_count(method.trainable_weights)
    student_count = _parameter_count(student.trainable_weights)
    if method_count <= OVERSIZED_METHOD_RATIO * student_count:
        return
    taps = f"student taps: {_describe_taps(spec.student_tap_names, spec.student)}"
    if spec.teacher_tap_names:
        taps += f"; teacher taps: {_describe_taps(spec.teacher_tap_names, spec.teacher)}"
    warnings.warn(
        f"Method '{method.name}' builds {method_count:,} trainable parameters, "
        f"more than {OVERSIZED_METHOD_RATIO}x the student's {student_count:,}. "
        f"Its parts grow with the channels of the taps it reads ({taps}). "
        "If that is not intended, pick taps with fewer channels: "
        "Distiller(student_taps=[...], teacher_taps=[...]), or "
        "--student_taps/--teacher_taps on the command line.",
        UserWarning,
        stacklevel=2,
    )


# Distillers already warned about integer (raw-pixel) images.
_WARNED_RAW_PIXELS = weakref.WeakSet()


# Largest |pixel| of a normalised image batch is a few units (Fashion-MNIST
# 2.0, CIFAR 2.1, ImageNet 2.6); images in 0-255 exceed this.
RAW_PIXEL_THRESHOLD = 20.0


def _on_tpu():
    return isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy)


def _warn_raw_float_pixels(distiller, largest):
    if distiller in _WARNED_RAW_PIXELS:
        return
    _WARNED_RAW_PIXELS.add(distiller)
    warnings.warn(
        f"The Distiller trains on float images that reach {largest:.1f}: raw 0-255 "
        "pixels? The models expect normalised images, e.g. (x / 255 - mean) / std "
        "per channel (kerakd.data pipelines do this).", UserWarning, stacklevel=2)


def check_batch_input(distiller, images, labels, num_classes):
    """Adds a check that int labels are class ids in `[0, num_classes)` to a
    training step (two reductions; XLA, `jit_compile=True`, drops it), and
    warns once per `distiller` about integer images (when its step is
    traced) or float images beyond `RAW_PIXEL_THRESHOLD` (when a step meets
    one), which are likely raw pixels that nothing normalised.

    Raises:
        tf.errors.InvalidArgumentError: when the step runs on a batch with a
            label outside the classes; the message gives the batch's label
            range and the number of classes.
    """
    if images.dtype.is_integer and distiller not in _WARNED_RAW_PIXELS:
        _WARNED_RAW_PIXELS.add(distiller)
        warnings.warn(
            f"The Distiller trains on {images.dtype.name} images: raw pixels? The "
            "models expect normalised float images, e.g. (x / 255 - mean) / std "
            "per channel (kerakd.data pipelines do this).",
            UserWarning, stacklevel=3)
    elif images.dtype.is_floating and not distiller.jit_compile and not _on_tpu():
        # Normalised images stay within a few units of 0; pixels in 0-255
        # reach far beyond. Checked on every batch (one reduction), told once.
        largest = tf.reduce_max(tf.abs(tf.cast(images, tf.float32)))

        def warn():
            tf.py_function(lambda value: _warn_raw_float_pixels(distiller, float(value)),
                           [largest], [])
            return tf.constant(True)

        tf.cond(largest > RAW_PIXEL_THRESHOLD, warn, lambda: tf.constant(False))
    if not labels.dtype.is_integer:
        return  # soft labels (mixup, cutmix)
    low, high = tf.reduce_min(labels), tf.reduce_max(labels)
    tf.debugging.Assert(
        tf.logical_and(low >= 0, high < num_classes),
        [f"Labels must be class ids in [0, {num_classes}) (the student predicts "
         f"{num_classes} classes), but this batch has labels from", low, "to", high,
         ". Fix the labels, or build the student (and teacher) for more classes."],
        name="check_labels")
