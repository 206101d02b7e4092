"""Compositions of methods: `kerakd.methods.get("fitnet+crd")`."""

import dataclasses

import keras

from kerakd import methods as methods_lib
from kerakd.methods.base import Method, MethodOutput

# Terms every method computes the same way (CE on the labels, conventions.md's
# KD term), so a composition keeps one copy.
SHARED_TERMS = ("ce", "kd")


def _role(method, role):
    return f"{method.name}_{role}"


@keras.saving.register_keras_serializable(package="kerakd")
class Compose(Method):
    """Several methods trained together: the objective sums all their terms.

    Each method keeps its own weights and trainable parts and reads its own
    taps: tap roles are prefixed with the method's name (`crd_features`), so
    `student_taps={"crd_features": [...]}` overrides one method's taps.

    Terms are reported under their own names, with two rules:

    - `ce` and `kd` (the shared terms) are kept once: the first method that
      returns one contributes its value and its weight; the copies of later
      methods are dropped. (`kd` copies must use one temperature.)
    - Any other name that an earlier method already uses is prefixed with
      the method's name (`vid_hint`). Extra predictions and metrics follow
      the same prefixing.

    So `"kd+at"` trains `0.1 CE + 0.9 KD + 1000 AT` (KD's CE and KD weights),
    and `"at+kd"` trains `1 CE + 0.9 KD + 1000 AT`.

    Args:
        methods: the `Method` instances, in order of precedence. Their names
            (`method.name`) must differ; `from_names` names each after its
            registered name.

    Example:

    >>> method = kerakd.methods.get("fitnet+crd", crd={"num_data": 50000})
    >>> method.term_weights   # after build: ce, hint, kd, crd
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
        self.components = methods
        self.requires_teacher = any(m.requires_teacher for m in methods)
        self.needs_index = any(m.needs_index for m in methods)
        self.student_taps = {
            _role(m, r): spec for m in methods for r, spec in m.student_taps.items()
        }
        self.teacher_taps = {
            _role(m, r): spec for m in methods for r, spec in m.teacher_taps.items()
        }
        self._term_names = []

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
        return cls([methods_lib.registry.factory(n)(name=n, **kwargs.get(n, {})) for n in names])

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
        self._check_kd_temperatures()
        self.term_weights, self._term_names = {}, []
        for method in self.components:
            names = {}
            for term, weight in method.term_weights.items():
                if term in self.term_weights and term in SHARED_TERMS:
                    names[term] = None
                    continue
                names[term] = f"{method.name}_{term}" if term in self.term_weights else term
                self.term_weights[names[term]] = weight
            self._term_names.append(names)

    def _check_kd_temperatures(self):
        temperatures = {
            m.name: m.temperature for m in self.components
            if "kd" in m.term_weights and hasattr(m, "temperature")
        }
        if len(set(temperatures.values())) > 1:
            raise ValueError(
                f"The composed methods compute the KD term at different "
                f"temperatures {temperatures}; it is kept once, so set one "
                "temperature for all."
            )

    def call(self, data, training=False):
        out = MethodOutput(losses={})
        for method, names in zip(self.components, self._term_names):
            view = dataclasses.replace(
                data,
                student=self._view(data.student, method, "student"),
                teacher=self._view(data.teacher, method, "teacher"),
            )
            part = method(data=view, training=training)
            for term, value in part.losses.items():
                if term not in names:
                    raise ValueError(
                        f"Method '{method.name}' returns term '{term}' that has "
                        "no weight in its `term_weights`."
                    )
                if names[term] is not None:
                    out.losses[names[term]] = value
            for merged, extra in ((out.logits, part.logits), (out.metrics, part.metrics)):
                for key, value in extra.items():
                    merged[f"{method.name}_{key}" if key in merged else key] = value
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
        config["methods"] = [
            keras.saving.deserialize_keras_object(m) for m in config["methods"]
        ]
        return cls(**config)
