"""Feature taps: named intermediate layers of a functional model as outputs.

`tap_model(model, names)` returns ONE functional model
`inputs -> [tap_1, ..., tap_n, logits]` that shares every layer (and weight)
with `model`, so a step runs each network once however many taps a method
reads. Layers of nested functional models (a `keras.applications` backbone
used as a layer) can be tapped by their own names.

Zoo models follow a naming convention so that methods can ask for taps by
kind rather than by name, and so that the convention survives saving:

- `"stages"`: layers named `stage1`, `stage2`, ... (stage outputs).
- `"blocks"`: layers named `block1`, `block2`, ... (residual-block outputs).
- `"penultimate"`: the layer named `pool` (pooled feature vector).

Example:

>>> teacher = kerakd.models.get("resnet32x4", num_classes=100)
>>> names = resolve_taps(teacher, "stages")       # ['stage1', 'stage2', 'stage3']
>>> tapped = tap_model(teacher, names)
>>> *features, logits = tapped(images, training=False)
"""

import difflib
import re

import keras

TAP_KINDS = {
    "stages": re.compile(r"^stage(\d+)$"),
    "blocks": re.compile(r"^block(\d+)$"),
    "penultimate": re.compile(r"^(pool)$"),
}


def _is_graph_model(layer):
    # Functional and (built) Sequential models can be walked node by node.
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth")


def all_layer_names(model):
    """Names of every layer of `model`, nested functional models included."""
    names = []
    for layer in model.layers:
        names.append(layer.name)
        if _is_graph_model(layer):
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
        model: a functional Keras model.
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
            models may be named.
        name: name of the returned model (default `<model.name>_tapped`).

    Returns:
        A `keras.Model` whose outputs are the tapped tensors followed by the
        model's own outputs.
    """
    if not _is_graph_model(model):
        raise ValueError(
            f"Model '{model.name}' is a subclassed model; taps need a "
            "functional (or Sequential) model whose layers can be named."
        )
    names = list(names)
    missing = [n for n in names if n not in all_layer_names(model)]
    if missing:
        raise _unknown_layer_error(model, missing)

    captured = {}

    def run(graph_model, inputs):
        def operation_fn(operation):
            def call(*args, **kwargs):
                if _is_graph_model(operation):
                    outputs = run(operation, args[0] if len(args) == 1 else args)
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

        return graph_model._run_through_graph(inputs, operation_fn=operation_fn)

    inputs = [
        keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name)
        for x in model.inputs
    ]
    outputs = run(model, inputs[0] if len(inputs) == 1 else inputs)
    outputs = keras.tree.flatten(outputs)
    taps = [captured[n] for n in names]
    return keras.Model(
        inputs if len(inputs) > 1 else inputs[0],
        taps + outputs,
        name=name or f"{model.name}_tapped",
    )
