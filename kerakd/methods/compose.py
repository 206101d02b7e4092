"""Compositions of methods: `kerakd.methods.get("fitnet+crd")`."""

import dataclasses
import inspect

import keras

from kerakd.methods.base import Method, MethodOutput
from kerakd.methods.registry import registry

# The one term every method computes identically: the cross-entropy of the
# student's logits on the labels (`Method`'s contract for a term named `ce`).
SHARED_TERM = "ce"
SEPARATOR = "/"


def _role(method, role):
    return f"{method.name}_{role}"


def _constructor_arguments(method):
    return inspect.signature(type(method)).parameters


@keras.saving.register_keras_serializable(package="kerakd")
class Compose(Method):
    """Several methods trained together: the objective sums all their terms.

    Each method keeps its own weights and trainable parts and reads its own
    taps: tap roles are prefixed with the method's name (`crd_features`), so
    `student_taps={"crd_features": [...]}` overrides one method's taps.

    Terms (docs/methods/compose.md):

    - `ce`, the label cross-entropy of the student, is the one term shared:
      it is the same quantity in every method, so it is computed and counted
      once. The methods that have it must give it the same weight; different
      weights are an error that names them.
    - Every other term is kept under `<method>/<term>` (`kd/kd`, `lfma/kd`,
      `at/at`), even where only one method has a term of that name: two
      methods' `kd` terms are often different quantities (LFMA's distils its
      heads' ensemble, AID's standardised logits). Extra predictions and
      metrics are named the same way (`lfma/head1_accuracy`).

    So `"kd+at"` trains `0.1 ce + 0.9 kd/kd + 1000 at/at` only once the two
    `ce` weights agree (KD's is 0.1, AT's 1): `get("kd+at", at={"ce_weight": 0.1})`.

    At most one method may rewrite the student (`prepare_student`, e.g.
    LFMA's `fmc_in_backbone`).

    Args:
        methods: the `Method` instances. Their names (`method.name`) must
            differ; `from_names` names each after its registered name.

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
    >>> method = kerakd.methods.get("fitnet+crd", crd={"num_data": 50000})
    >>> [type(part).__name__ for part in method.components]
    ['FitNet', 'CRD']
    >>> distiller = kerakd.Distiller(student, method, teacher)
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> method.term_weights
    {'ce': 1.0, 'fitnet/hint': 100.0, 'crd/kd': 1.0, 'crd/crd': 0.8}
    """

    def __init__(self, methods, **kwargs):
        super().__init__(**kwargs)
        methods = list(methods)
        if len(methods) < 2:
            raise ValueError(f"Compose needs at least two methods, got {len(methods)}.")
        for method in methods:
            if not isinstance(method, Method):
                raise TypeError(
                    f"Compose takes kerakd Methods; got {type(method).__name__}."
                )
        names = [m.name for m in methods]
        if len(set(names)) != len(names):
            raise ValueError(
                f"Compose needs methods with distinct names (they prefix tap "
                f"roles and terms); got {names}. Pass name=... to each."
            )
        rewriting = [m.name for m in methods if m.rewrites_student]
        if len(rewriting) > 1:
            raise ValueError(
                f"Methods {rewriting} each rewrite the student (prepare_student); "
                "a composition can hold at most one of them."
            )
        self.components = methods
        self.requires_teacher = any(m.requires_teacher for m in methods)
        self.needs_index = any(m.needs_index for m in methods)
        self.needs_strong_view = any(m.needs_strong_view for m in methods)
        self._update_taps()
        self._term_names = []
        self._check_shared_weights()  # again at build: some methods set weights there

    def _update_taps(self):
        self.student_taps = {
            _role(m, r): spec for m in self.components for r, spec in m.student_taps.items()
        }
        self.teacher_taps = {
            _role(m, r): spec for m in self.components for r, spec in m.teacher_taps.items()
        }

    @property
    def rewrites_student(self):
        return any(m.rewrites_student for m in self.components)

    def prepare_student(self, student):
        """The student as the one method that rewrites it needs it (else
        `student` itself); the composition's taps follow."""
        for method in self.components:
            student = method.prepare_student(student)
        self._update_taps()
        return student

    @classmethod
    def from_names(cls, names, **kwargs):
        """Composes registered methods.

        Args:
            names: registered method names, e.g. `["fitnet", "crd"]`.
            **kwargs: `{name: {hyperparameter: value}}` per method, e.g.
                `crd={"negatives": 4096}`.
        """
        names = [n.strip() for n in names]
        unknown = set(kwargs) - set(names)
        if unknown:
            raise ValueError(
                f"Hyperparameters for {sorted(unknown)}, which are not in the "
                f"composition {names}. Pass them as {{method name: {{arg: value}}}}."
            )
        return cls([registry.factory(n)(name=n, **kwargs.get(n, {})) for n in names])

    def _view(self, by_role, method, side):
        roles = getattr(method, f"{side}_taps")
        return {r: by_role[_role(method, r)] for r in roles if _role(method, r) in by_role}

    def build(self, spec):
        super().build(spec)
        for method in self.components:
            method.build(dataclasses.replace(
                spec,
                student=self._view(spec.student, method, "student"),
                teacher=self._view(spec.teacher, method, "teacher"),
                student_tap_names=self._view(spec.student_tap_names, method, "student"),
                teacher_tap_names=self._view(spec.teacher_tap_names, method, "teacher"),
            ))
        self._check_shared_weights()
        self.term_weights, self._term_names = {}, []
        for method in self.components:
            names = {term: self._name(method, term) for term in method.term_weights}
            for term, weight in method.term_weights.items():
                self.term_weights[names[term]] = weight
            self._term_names.append(names)

    @staticmethod
    def _name(method, term):
        return term if term == SHARED_TERM else f"{method.name}{SEPARATOR}{term}"

    def _check_shared_weights(self):
        # A method whose `ce` weight is 0 has no `ce` term, but its weight
        # still disagrees with another method's non-zero one.
        weights = {m.name: float(m.term_weights.get(SHARED_TERM, 0.0)) for m in self.components
                   if SHARED_TERM in m.term_weights or SHARED_TERM in m.zero_weight_terms}
        if len(set(weights.values())) <= 1:
            return
        listed = ", ".join(f"{name}: {weight:g}" for name, weight in weights.items())
        message = (f"The composed methods weight the label cross-entropy `ce` differently "
                   f"({listed}). It is one term, counted once: give it one weight")
        settable = [m.name for m in self.components
                    if m.name in weights and "ce_weight" in _constructor_arguments(m)]
        if settable:
            name, target = settable[0], next(w for n, w in weights.items() if n != settable[0])
            composition = "+".join(m.name for m in self.components)
            message += (f" through `ce_weight`, e.g. kerakd.methods.get('{composition}', "
                        f"{name}={{'ce_weight': {target:g}}}), or --{name}_ce_weight={target:g}")
        raise ValueError(message + ".")

    def _forward_view(self, forward, method, side):
        """A second-view forward (`StepData.forward_*`) returning `method`'s roles."""
        if forward is None:
            return None

        def call(images):
            taps, logits = forward(images)
            return self._view(taps, method, side), logits

        return call

    def call(self, data, training=False):
        out = MethodOutput(losses={})
        for method, names in zip(self.components, self._term_names):
            view = dataclasses.replace(
                data,
                student=self._view(data.student, method, "student"),
                teacher=self._view(data.teacher, method, "teacher"),
                forward_student=self._forward_view(data.forward_student, method, "student"),
                forward_teacher=self._forward_view(data.forward_teacher, method, "teacher"),
            )
            part = method(data=view, training=training)
            for term, value in part.losses.items():
                if term not in names:
                    raise ValueError(
                        f"Method '{method.name}' returns term '{term}' that has "
                        "no weight in its `term_weights`."
                    )
                if names[term] not in out.losses:  # the shared `ce` once
                    out.losses[names[term]] = value
            for merged, extra in ((out.logits, part.logits), (out.metrics, part.metrics)):
                for key, value in extra.items():
                    merged[f"{method.name}{SEPARATOR}{key}"] = value
        return out

    def callbacks(self, log_dir, sample_images):
        return [c for m in self.components for c in m.callbacks(log_dir, sample_images)]

    def get_config(self):
        config = super().get_config()
        config["methods"] = [keras.saving.serialize_keras_object(m) for m in self.components]
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Unbuilt: a saved component's own build config (its view of the
        # composition's spec) would build it here, and the composition's
        # build would then add its parts a second time.
        config["methods"] = [
            keras.saving.deserialize_keras_object(
                {k: v for k, v in m.items() if k != "build_config"})
            for m in config["methods"]
        ]
        return cls(**config)
