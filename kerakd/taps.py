"""Feature taps: named intermediate layers of a functional model as outputs.

`tap_model(model, names)` returns ONE functional model
`inputs -> [tap_1, ..., tap_n, logits]` that shares every layer (and weight)
with `model`, so a step runs each network once however many taps a method
reads. `model` is a functional model or a built `keras.Sequential` (which
runs a functional graph over its layers). Layers of nested functional or
Sequential models (a `keras.applications` backbone used as a layer) can be
tapped by their own names. Subclassed models have no graph to tap
(`check_tappable`).

Zoo models follow a naming convention so that methods can ask for taps by
kind rather than by name, and so that the convention survives saving:

- `"stages"`: layers named `stage1`, `stage2`, ... (stage outputs).
- `"blocks"`: layers named `block1`, `block2`, ... (residual-block outputs).
- `"penultimate"`: the layer named `pool` (pooled feature vector).

Example:

>>> from kerakd.taps import resolve_taps, tap_model
>>> teacher = kerakd.models.get("resnet8x4", 10, (16, 16, 3))
>>> names = resolve_taps(teacher, "stages")
>>> names, resolve_taps(teacher, "penultimate")
(['stage1', 'stage2', 'stage3'], ['pool'])
>>> tapped = tap_model(teacher, names)
>>> *features, logits = tapped(np.zeros((2, 16, 16, 3)), training=False)
>>> [tuple(f.shape) for f in features], tuple(logits.shape)
([(2, 16, 16, 64), (2, 8, 8, 128), (2, 4, 4, 256)], (2, 10))
"""

import difflib
import re

import keras
from keras import ops

from kerakd import compat

TAP_KINDS = {
    "stages": re.compile(r"^stage(\d+)$"),
    "blocks": re.compile(r"^block(\d+)$"),
    "penultimate": re.compile(r"^(pool)$"),
}


def _graph(layer):
    """The functional graph that runs `layer`, or None if it has none.

    A functional model is its own graph. A built `keras.Sequential` runs a
    functional graph over its own layers (its `inputs` and `outputs` are that
    graph's), so tapping it there keeps its weights and its single forward
    pass. Subclassed models, unbuilt Sequentials and plain layers have none.
    """
    if isinstance(layer, keras.Sequential):
        return compat.sequential_graph(layer)
    if isinstance(layer, keras.Model) and compat.is_functional(layer):
        return layer
    return None


def check_tappable(model, what=None, logits_only_methods=()):
    """Raises a ValueError unless `model` is functional or a built Sequential.

    Args:
        model: the Keras model to check.
        what: how the message names the model (default `Model '<name>'`).
        logits_only_methods: names of the methods that read no tap, which a
            subclassed model wrapped whole can serve; the message lists them.

    Raises:
        ValueError: `model` is not a Keras model, is subclassed (the message
            says how to build it functionally) or is an unbuilt Sequential.
    """
    what = what or f"Model '{getattr(model, 'name', model)}'"
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"{what} is a {type(model).__name__}, not a Keras model; pass a "
            "functional keras.Model (or a keras.Sequential)."
        )
    if _graph(model) is not None:
        return
    if isinstance(model, keras.Sequential):
        raise ValueError(
            f"{what} is a Sequential model that is not built yet, so it has no "
            "inputs, outputs or layer outputs to read. Start it with "
            "keras.Input(shape) as its first layer, or call "
            "model.build((None, *shape)) first."
        )
    wrapped = (
        f"enough for the methods that read logits alone "
        f"({', '.join(logits_only_methods)}), not for the others"
        if logits_only_methods else "enough only for methods that read no taps"
    )
    raise ValueError(
        f"{what} is a subclassed model ({type(model).__name__}): it has no "
        "functional graph, so its inputs, outputs and inner layers cannot be "
        "read. Build it functionally from its layers: "
        "`inputs = keras.Input(shape)`, then `x = layer(x)` for each of its "
        "layers in order, and `model = keras.Model(inputs, logits)` (a "
        "keras.Sequential of those layers works too); its layers can then be "
        "tapped by name. Wrapping it whole (`inputs = keras.Input(shape); "
        "outputs = backbone(inputs); keras.Model(inputs, outputs)`) gives it "
        "inputs and outputs but keeps its inner layers hidden: that is "
        f"{wrapped}."
    )


def all_layer_names(model):
    """Names of every layer of `model`, nested functional and Sequential
    models' layers included."""
    names = []
    for layer in (_graph(model) or model).layers:
        names.append(layer.name)
        if _graph(layer) is not None:
            names.extend(all_layer_names(layer))
    return names


def _unknown_layer_error(model, missing):
    available = all_layer_names(model)
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
        hints.append(f"'{name}'" + (f" (did you mean {close}?)" if close else ""))
    return ValueError(
        f"Model '{model.name}' has no layer named {', '.join(hints)}. "
        f"Tap names must be layer names of the model; it has: {available}."
    )


def resolve_taps(model, spec):
    """Turns a tap spec into a list of layer names of `model`.

    Args:
        model: a functional (or built Sequential) Keras model.
        spec: a tap kind (`"stages"`, `"blocks"`, `"penultimate"`), a single
            layer name, or a list of layer names (kept in the given order;
            list them shallow to deep).

    Returns:
        A list of layer names.

    Raises:
        ValueError: a name is not a layer of the model (the message lists the
            close matches and all layer names), or the model has no layer of
            the requested kind.
    """
    available = all_layer_names(model)
    if isinstance(spec, str) and spec in TAP_KINDS:
        pattern = TAP_KINDS[spec]
        found = [(m.group(1), n) for n in available if (m := pattern.match(n))]
        if not found:
            raise ValueError(
                f"Model '{model.name}' has no '{spec}' taps: kerakd finds them "
                f"by layer name ({pattern.pattern}), the convention of "
                "kerakd.models. Pass the layer names explicitly, e.g. "
                "Distiller(..., student_taps=[...]); the model's layers are: "
                f"{available}."
            )
        found.sort(key=lambda item: int(item[0]) if item[0].isdigit() else 0)
        return [name for _, name in found]
    names = [spec] if isinstance(spec, str) else list(spec)
    missing = [n for n in names if n not in available]
    if missing:
        raise _unknown_layer_error(model, missing)
    return names


def tap_model(model, names, name=None):
    """A functional model `inputs -> [*taps, *model.outputs]` sharing `model`'s layers.

    Args:
        model: a functional (or built Sequential) Keras model.
        names: layer names to expose, in order; layers of nested functional
            or Sequential models may be named.
        name: name of the returned model (default `<model.name>_tapped`).

    Returns:
        A `keras.Model` whose outputs are the tapped tensors followed by the
        model's own outputs.

    Raises:
        ValueError: `model` is subclassed or an unbuilt Sequential
            (`check_tappable`), a name is not a layer of it, or a named layer
            is called more than once.
    """
    check_tappable(model)
    names = list(names)
    missing = [n for n in names if n not in all_layer_names(model)]
    if missing:
        raise _unknown_layer_error(model, missing)

    captured = {}

    def run(graph_model, inputs):
        def operation_fn(operation):
            def call(*args, **kwargs):
                if _graph(operation) is not None:
                    outputs = run(_graph(operation), args[0] if len(args) == 1 else args)
                else:
                    outputs = operation(*args, **kwargs)
                if operation.name in names:
                    if operation.name in captured:
                        raise ValueError(
                            f"Layer '{operation.name}' is called more than "
                            "once in the model, so its output is ambiguous; "
                            "tap a layer that is used once."
                        )
                    captured[operation.name] = outputs
                return outputs

            return call

        return compat.run_through_graph(graph_model, inputs, operation_fn)

    graph = _graph(model)
    inputs = [
        keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name)
        for x in graph.inputs
    ]
    outputs = run(graph, inputs[0] if len(inputs) == 1 else inputs)
    outputs = keras.tree.flatten(outputs)
    taps = [captured[n] for n in names]
    return keras.Model(
        inputs if len(inputs) > 1 else inputs[0],
        taps + outputs,
        name=name or f"{model.name}_tapped",
    )


class TappedModel:
    """A tapped network and its roles; a plain object, so Keras does not track
    (and save) the tapped model twice: its layers are the network's own."""

    def __init__(self, model, roles):
        self.roles = roles  # {role: [layer name, ...]}
        self.names = list(dict.fromkeys(n for names in roles.values() for n in names))
        self.model = tap_model(model, self.names)

    @classmethod
    def of(cls, model, method_roles, override, side):
        """Taps `model` where the method's roles (with a user override) point."""
        roles = tap_roles(method_roles, override, side)
        return cls(model, {r: resolve_taps(model, spec) for r, spec in roles.items()})

    def __call__(self, images, training):
        by_name, logits = self.features(images, training)
        return {r: [by_name[n] for n in names] for r, names in self.roles.items()}, logits

    def frozen(self, images):
        """`(taps, logits)` in inference mode as stop-gradient targets (the
        teacher's: the gradient reaches neither its weights nor its input)."""
        return keras.tree.map_structure(ops.stop_gradient, self(images, training=False))

    def features(self, images, training):
        """`({layer name: features}, logits)` of one forward pass."""
        outputs = self.model(images, training=training)
        *taps, logits = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return dict(zip(self.names, taps)), logits

    def shapes(self, batch_size):
        *taps, logits = self.model.outputs
        by_name = {n: (batch_size, *t.shape[1:]) for n, t in zip(self.names, taps)}
        roles = {r: [by_name[n] for n in names] for r, names in self.roles.items()}
        return roles, (batch_size, *logits.shape[1:])


def tap_roles(method_defaults, override, side):
    """Merges a user's tap override into a method's `{role: spec}` defaults."""
    roles = dict(method_defaults)
    if override is None:
        return roles
    if not isinstance(override, dict):
        if len(roles) != 1:
            raise ValueError(
                f"This method reads {side} taps in several roles {sorted(roles)}; "
                f"pass {side}_taps as a dict {{role: [layer names]}}."
            )
        override = {next(iter(roles)): override}
    unknown = set(override) - set(roles)
    if unknown:
        raise ValueError(
            f"Unknown {side} tap role(s) {sorted(unknown)}; this method has "
            f"{sorted(roles) or 'no ' + side + ' taps'}."
        )
    roles.update(override)
    return roles
