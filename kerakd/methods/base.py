"""The contract between a distillation method and the `Distiller`."""

import dataclasses
import functools
import inspect
import warnings
from typing import Any, Callable, Optional

import keras


@dataclasses.dataclass
class TapSpec:
    """Static shapes a method is built from (`Method.build`).

    Attributes:
        student: `{role: [shape, ...]}` of the student's taps, batch dim first.
        teacher: the same for the teacher (`{}` without a teacher).
        student_logits: shape of the student's logits `(B, K)`.
        teacher_logits: shape of the teacher's logits, or None.
        image_shape: shape of one input batch `(B, H, W, C)`.
        student_tap_names / teacher_tap_names: `{role: [layer name, ...]}`,
            for labelling (link matrices, TensorBoard images).

    `B` is the per-replica batch (None if unknown when the Distiller is built).
    """

    student: dict
    teacher: dict
    student_logits: tuple
    teacher_logits: Optional[tuple]
    image_shape: tuple
    student_tap_names: dict = dataclasses.field(default_factory=dict)
    teacher_tap_names: dict = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self):
        return self.student_logits[-1]

    @property
    def batch_size(self):
        return self.image_shape[0]

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        def shapes(by_role):
            return {r: [tuple(s) for s in v] for r, v in by_role.items()}

        config = dict(config)
        config["student"] = shapes(config["student"])
        config["teacher"] = shapes(config["teacher"])
        for key in ("student_logits", "teacher_logits", "image_shape"):
            if config[key] is not None:
                config[key] = tuple(config[key])
        return cls(**config)


@dataclasses.dataclass
class StepData:
    """Everything a method sees in one step, on one replica.

    Attributes:
        images: the input batch `(B, H, W, C)`.
        labels: int class ids `(B,)` or soft labels `(B, K)` (MixUp/CutMix).
        student: `{role: [tap tensor, ...]}` (same roles as `Method.student_taps`).
        student_logits: `(B, K)`.
        teacher: `{role: [tap tensor, ...]}`, `{}` without a teacher.
        teacher_logits: `(B, K)` or None.
        training: True in `train_step`.
        forward_student: `images -> (taps dict, logits)`, one more student
            forward (same training mode) for methods that need a second view.
        forward_teacher: the same for the teacher (inference mode), or None.
        index: dataset indices of the examples `(B,)` when the pipeline
            provides them (contrastive memory banks), else None.
        strong_images: a second, strongly augmented view of the same
            examples `(B, H, W, C)` when the pipeline provides it (methods
            with `needs_strong_view`), else None; `images` is the weak view.
    """

    images: Any
    labels: Any
    student: dict
    student_logits: Any
    teacher: dict = dataclasses.field(default_factory=dict)
    teacher_logits: Any = None
    training: bool = False
    forward_student: Optional[Callable] = None
    forward_teacher: Optional[Callable] = None
    index: Any = None
    strong_images: Any = None


@dataclasses.dataclass
class MethodOutput:
    """What `Method.call` returns.

    Attributes:
        losses: `{term name: unweighted per-replica scalar}` of the terms in
            `method.term_weights` (no zero-weight term); the objective is
            `sum(method.term_weights[name] * value)`.
        logits: extra predictions `{name: (B, K) logits}` whose accuracy the
            Distiller reports as `<name>_accuracy` (heads, self-teachers).
        metrics: other scalars to report as-is (e.g. `sm_score`).
    """

    losses: dict
    logits: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)


class Method(keras.layers.Layer):
    """Base class of distillation methods.

    A method is a Keras layer that holds the method's trainable parts, built
    from the tap shapes by `build(spec)`, and whose `call(data)` returns a
    `MethodOutput` with its loss terms. Subclasses set:

    - `requires_teacher` (class attribute): False for self-distillation.
    - `needs_index` (class attribute): True if `call` reads `data.index`
      (the data pipeline then yields `({"images", "index"}, labels)`).
    - `needs_strong_view` (class attribute): True if `call` reads
      `data.strong_images`, a strongly augmented second view of each example
      (the pipeline then yields `({"images", "strong_images"}, labels)`,
      `views=("weak", "strong")`); the method runs the networks on it with
      `data.forward_student` / `data.forward_teacher`.
    - `student_taps`, `teacher_taps` (class attributes): `{role: tap spec}`,
      the default taps of each role (a tap kind such as `"stages"` or a list
      of layer names); users override them through
      `Distiller(student_taps=..., teacher_taps=...)`.
    - `term_weights`: `{term name: weight}` for every loss term `call` returns,
      set with `set_term_weights`, which leaves out the terms whose weight is
      0: such a term is neither in the objective nor reported
      (docs/methods/conventions.md, "Zero-weight terms"); `call` returns the
      others only (`weighted`).
      A term named `ce` must be the cross-entropy of the student's logits on
      the labels (`losses.cross_entropy(labels, student_logits)`): a
      composition of methods counts it once.

    Hyperparameters are constructor arguments, named by the rule of
    docs/methods/conventions.md ("Hyperparameter names"), each kept in the
    attribute of its name, from which `get_config()` reads it.
    """

    requires_teacher = True
    needs_index = False
    needs_strong_view = False
    student_taps = {}
    teacher_taps = {}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.term_weights = {}
        self.zero_weight_terms = ()
        self.spec = None

    def set_term_weights(self, weights):
        """Sets `term_weights` to `weights` without the terms whose weight is 0.

        Args:
            weights: `{term name: weight}` of every term the method has, with
                the weights as numbers (a method whose weights vary in
                training puts its variables in `term_weights` afterwards).

        The terms left out are listed in `zero_weight_terms`.

        Raises:
            ValueError: every weight is 0 (the method would train nothing).
        """
        zero = tuple(name for name, weight in weights.items() if float(weight) == 0)
        if len(zero) == len(weights):
            raise ValueError(
                f"Every loss weight of {type(self).__name__} is 0 ({', '.join(zero)}); "
                "give at least one a weight > 0."
            )
        self.zero_weight_terms = zero
        self.term_weights = {name: w for name, w in weights.items() if name not in zero}

    def weighted(self, terms):
        """The terms of `terms` that have a weight in `term_weights`.

        Args:
            terms: `{term name: value, or a function of no arguments computing
                it}`. The function of a zero-weight term is never called, so a
                costly term (one more forward) costs nothing at weight 0.

        Returns:
            `{term name: value}`, the `losses` of a `MethodOutput`.
        """
        return {name: value() if callable(value) else value
                for name, value in terms.items() if name in self.term_weights}

    @property
    def rewrites_student(self):
        """True if `prepare_student` returns another model than its input."""
        return False

    def prepare_student(self, student):
        """The student this method trains (default: `student` itself). A
        method that must change the student's graph returns a new model
        here; call it before building the `Distiller`."""
        return student

    def build(self, spec):
        """Creates the method's trainable parts from a `TapSpec`."""
        self.spec = spec

    def get_config(self):
        """The layer's config and the method's hyperparameters: every
        argument of its constructor, read from the attribute of the same name.

        A tuple is given as a list, as a saved config holds it; an argument
        without such an attribute is left to the subclass's `get_config`,
        which also adds what no argument holds.

        Example:

        >>> method = kerakd.methods.get("kd", temperature=2.0)
        >>> config = method.get_config()
        >>> config["name"], config["ce_weight"], config["kd_weight"], config["temperature"]
        ('kd', 0.1, 0.9, 2.0)
        >>> type(method).from_config(config).get_config() == config
        True
        """
        config = super().get_config()
        parameters = inspect.signature(type(self).__init__).parameters.values()
        for parameter in list(parameters)[1:]:  # after `self`
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            if hasattr(self, parameter.name):
                value = getattr(self, parameter.name)
                config[parameter.name] = list(value) if isinstance(value, tuple) else value
        return config

    def get_build_config(self):
        return {"spec": self.spec.get_config()} if self.spec else None

    def build_from_config(self, config):
        if config and config.get("spec"):
            self.build(TapSpec.from_config(config["spec"]))

    def call(self, data, training=False):
        raise NotImplementedError

    def callbacks(self, log_dir, sample_images):
        """Keras callbacks the training CLI adds for this method.

        Args:
            log_dir: the run's TensorBoard directory (`<model_dir>/logs`).
            sample_images: a fixed NumPy batch of validation images (the
                per-replica batch size), for callbacks that draw predictions.

        Returns:
            A list of `keras.callbacks.Callback` (default: none).
        """
        return []


def check_output(method, out):
    """`out`, what `method` returned, if it is a `MethodOutput`.

    Raises:
        TypeError: it is not (the Distiller reads nothing else).
    """
    if not isinstance(out, MethodOutput):
        raise TypeError(
            f"Method '{method.name}'.call must return a MethodOutput, "
            f"got {type(out).__name__}."
        )
    return out


def renamed_arguments(**renames):
    """Keeps old names of constructor arguments working, with a warning.

    Decorates a method's `__init__`: each old name passed as a keyword
    (`alpha=2`, also in an old saved config) is passed on under its new name
    and warns with a `FutureWarning` that names the new one. The mapping is
    kept as `__init__.renamed_arguments`, from which `kerakd.flags` makes the
    old flags (`--frskd_alpha`) deprecated aliases too.

    Args:
        **renames: `old name="new name"`.

    Example (FRSKD's `__init__` has `@renamed_arguments(alpha="self_kd_weight",
    beta="self_at_weight")`):

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     method = kerakd.methods.get("frskd", alpha=1.0)
    >>> method.self_kd_weight
    1.0
    >>> print(caught[0].category.__name__, caught[0].message)
    FutureWarning FRSKD: `alpha` is deprecated, use `self_kd_weight` (same meaning).
    >>> type(method).__init__.renamed_arguments
    {'alpha': 'self_kd_weight', 'beta': 'self_at_weight'}
    """

    def decorate(init):
        @functools.wraps(init)
        def wrapper(self, *args, **kwargs):
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                owner = type(self).__name__
                if new in kwargs:
                    raise TypeError(
                        f"{owner} got both `{old}` and `{new}`; `{old}` is the old "
                        f"name of `{new}`: pass `{new}` only."
                    )
                warnings.warn(
                    f"{owner}: `{old}` is deprecated, use `{new}` (same meaning).",
                    FutureWarning, stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            init(self, *args, **kwargs)

        # The signature stays the constructor's own: flags are made from it,
        # and Keras reads it with `getfullargspec`, which ignores `__wrapped__`.
        wrapper.__signature__ = inspect.signature(init)
        wrapper.renamed_arguments = dict(renames)
        return wrapper

    return decorate


def check_paired_taps(method, spec, role="features"):
    """Checks that a method pairing taps one to one has as many on each side.

    Returns:
        The `(student shape, teacher shape)` pairs.
    """
    student, teacher = spec.student[role], spec.teacher[role]
    if len(student) != len(teacher):
        raise ValueError(
            f"{method} pairs taps one to one, but the student has {len(student)} "
            f"taps and the teacher {len(teacher)}. Pass student_taps/"
            "teacher_taps lists of equal length."
        )
    return list(zip(student, teacher))


def check_non_negative(**values):
    """Raises a ValueError naming each hyperparameter that is negative."""
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"`{name}` must be >= 0, got {value}.")


def check_positive(**values):
    """Raises a ValueError naming each hyperparameter that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"`{name}` must be > 0, got {value}.")


def check_one_pair(spec, method_name):
    """Raises unless `spec` has exactly one `"features"` tap on each side."""
    for side in ("student", "teacher"):
        count = len(getattr(spec, side)["features"])
        if count != 1:
            raise ValueError(
                f"{method_name} compares one student tap with one teacher tap, "
                f"but the {side} has {count}. Pass a single layer name as "
                f"{side}_taps."
            )
