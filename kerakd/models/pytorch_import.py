"""Teachers from the community's PyTorch checkpoints, by a pure weight copy.

`kerakd.models.from_pytorch(name, checkpoint)` builds zoo model `name` and
fills every weight from a PyTorch state_dict of the reference architecture:

- CIFAR ResNets `resnet8` ... `resnet110`, `resnet8x4`, `resnet32x4`
  (RepDistiller/mdistiller `models/resnet.py`), WRNs `wrn_*` (`wrn.py`),
  VGG-BN `vgg*` (`vgg.py`, the `*_bn` models), `mobilenetv2` (`mobile_half`),
  `shufflenetv1`/`shufflenetv2` (`ShuffleV1`/`ShuffleV2`), and
  `resnet50_cifar`, `resnet18_cifar`, `resnet34_cifar` (`resnetv2.py`'s
  `ResNet50`/`ResNet18`/`ResNet34`);
- torchvision's `resnet18`, `resnet34`, `resnet50` (ImageNet).

The checkpoint is a path to a `.pth`/`.pt` file (read with torch, the
`kerakd[torch]` extra) or a `.npz` of the state_dict's arrays (no torch
needed), or an already-loaded mapping. Accepted contents: RepDistiller's
`{'model': state_dict, 'epoch': ..., ...}`, a bare state_dict, either with a
`module.` prefix (DataParallel) or without. `num_batches_tracked` is ignored.

Every zoo weight is filled exactly once and every checkpoint key is used:
a key left over, a weight without its key, or a shape that differs after the
layout transpose is refused with a `CheckpointMismatchError` naming the zoo
weight and the checkpoint key. Layouts: Conv2d `(out, in/g, kh, kw)` ->
Keras `(kh, kw, in/g, out)`; depthwise `(C, 1, kh, kw)` -> `(kh, kw, C, 1)`;
Linear `(K, C)` -> `(C, K)`; BatchNorm weight/bias/running_mean/running_var
-> gamma/beta/moving_mean/moving_variance as stored (both frameworks use the
stored running variance directly at inference, epsilon 1e-5 in both).

The imported teacher expects the input normalisation it was trained with
(`docs/teachers.md`): kerakd's cifar100 pipeline applies RepDistiller's,
its imagenet2012 pipeline torchvision's.

Example (a RepDistiller-style checkpoint of a freshly built reference
model, which needs torch; a published `ckpt_epoch_240.pth` reads the same):

>>> import torch
>>> from kerakd import torch_reference
>>> reference = torch_reference.build("resnet8", num_classes=10).eval()
>>> torch.save({"model": reference.state_dict(), "epoch": 240}, "ckpt_epoch_240.pth")
>>> teacher = kerakd.models.from_pytorch("resnet8", "ckpt_epoch_240.pth", num_classes=10)
>>> images = np.random.default_rng(0).random((2, 32, 32, 3), dtype="float32")
>>> with torch.no_grad():
...     _, torch_logits = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
>>> keras_logits = keras.ops.convert_to_numpy(teacher(images))
>>> bool(np.abs(keras_logits - torch_logits.numpy()).max() < 1e-4)   # the same network
True
>>> kerakd.models.core_keras(teacher).save("resnet8_cifar10.keras")   # loads without kerakd
"""

import collections.abc
import difflib
import os
import pickle
import re
import zipfile

import keras
import numpy as np

from kerakd import models

TORCH_EXTRA = 'pip install -e ".[torch]"'
IGNORED_SUFFIXES = ("num_batches_tracked",)
MAX_LISTED = 12  # problems listed per kind in an error message


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the zoo model."""


# -- checkpoint key of each zoo layer, per family ----------------------------


def _resnet_keys(shortcut, classifier):
    """CIFAR ResNets, torchvision ResNets (shortcut `downsample`, classifier
    `fc`) and RepDistiller's resnetv2 (`shortcut`, `linear`)."""
    block = re.compile(r"s(\d+)b(\d+)_(conv\d|bn\d|down_conv|down_bn)$")
    fixed = {"stem_conv": "conv1", "stem_bn": "bn1", "logits": classifier}
    parts = {"down_conv": f"{shortcut}.0", "down_bn": f"{shortcut}.1"}

    def key(name):
        if name in fixed:
            return fixed[name]
        match = block.match(name)
        if match:
            stage, index, part = match.groups()
            return f"layer{stage}.{int(index) - 1}.{parts.get(part, part)}"
        return None

    return key


def _wrn_key(name):
    fixed = {"stem_conv": "conv1", "final_bn": "bn1", "logits": "fc"}
    parts = {"pre_bn": "bn1", "conv1": "conv1", "mid_bn": "bn2", "conv2": "conv2",
             "shortcut": "convShortcut"}
    if name in fixed:
        return fixed[name]
    match = re.match(r"s(\d+)b(\d+)_(pre_bn|conv1|mid_bn|conv2|shortcut)$", name)
    if match:
        stage, index, part = match.groups()
        return f"block{stage}.layer.{int(index) - 1}.{parts[part]}"
    return None


def _vgg_key(name):
    if name == "logits":
        return "classifier"
    match = re.match(r"g(\d)_(conv|bn)(\d+)$", name)
    if match:
        group, kind, j = match.groups()
        # nn.Sequential of conv, BN, ReLU per conv (the last ReLU removed).
        return f"block{group}.{3 * (int(j) - 1) + (kind == 'bn')}"
    return None


def _mobilenetv2_key(name):
    from kerakd.models.mobilenetv2 import GROUPS

    fixed = {"stem_conv": "conv1.0", "stem_bn": "conv1.1", "head_conv": "conv2.0",
             "head_bn": "conv2.1", "logits": "classifier.0"}
    parts = {"expand_conv": 0, "expand_bn": 1, "dw": 3, "dw_bn": 4, "project": 6,
             "project_bn": 7}
    if name in fixed:
        return fixed[name]
    match = re.match(r"g(\d)b(\d+)_(expand_conv|expand_bn|dw_bn|dw|project_bn|project)$", name)
    if match:
        group, index, part = match.groups()
        return f"blocks.{group}.{int(index) - 1}.conv.{parts[part]}"
    match = re.match(r"block(\d+)$", name)
    if match:
        # A block without a shortcut gives its projection BN the tap name.
        blocks = [(g, i) for g, spec in enumerate(GROUPS) for i in range(spec[2])]
        n = int(match.group(1))
        if 1 <= n <= len(blocks):
            group, index = blocks[n - 1]
            return f"blocks.{group}.{index}.conv.7"
    return None


def _shufflenetv1_key(name):
    fixed = {"stem_conv": "conv1", "stem_bn": "bn1", "logits": "linear"}
    parts = {"conv1": "conv1", "conv1_bn": "bn1", "dw": "conv2", "dw_bn": "bn2",
             "conv3": "conv3", "conv3_bn": "bn3"}
    if name in fixed:
        return fixed[name]
    match = re.match(r"s(\d)u(\d+)_(conv1_bn|conv1|dw_bn|dw|conv3_bn|conv3)$", name)
    if match:
        stage, index, part = match.groups()
        return f"layer{stage}.{int(index) - 1}.{parts[part]}"
    return None


def _shufflenetv2_key(name):
    fixed = {"stem_conv": "conv1", "stem_bn": "bn1", "head_conv": "conv2", "head_bn": "bn2",
             "logits": "linear"}
    down = {"left_dw": "conv1", "left_dw_bn": "bn1", "left_conv": "conv2",
            "left_conv_bn": "bn2", "right_conv1": "conv3", "right_conv1_bn": "bn3",
            "right_dw": "conv4", "right_dw_bn": "bn4", "right_conv2": "conv5",
            "right_conv2_bn": "bn5"}
    basic = {"conv1": "conv1", "conv1_bn": "bn1", "dw": "conv2", "dw_bn": "bn2",
             "conv2": "conv3", "conv2_bn": "bn3"}
    if name in fixed:
        return fixed[name]
    match = re.match(r"s(\d)down_(\w+)$", name)
    if match and match.group(2) in down:
        return f"layer{match.group(1)}.0.{down[match.group(2)]}"
    match = re.match(r"s(\d)u(\d+)_(\w+)$", name)
    if match and match.group(3) in basic:
        # The reference's layer{s}.0 is the down-sampling unit: unit u{i} is layer{s}.{i}.
        stage, index, part = match.groups()
        return f"layer{stage}.{int(index)}.{basic[part]}"
    return None


def _sources():
    """{zoo name: (reference definition, zoo layer name -> checkpoint module)}."""
    from kerakd.models import resnet_cifar, vgg, wrn

    rep = "RepDistiller/mdistiller models/"
    sources = {}
    for name in resnet_cifar.CONFIGS:
        sources[name] = (rep + "resnet.py", _resnet_keys("downsample", "fc"))
    for name in ("resnet18", "resnet34", "resnet50"):
        sources[name] = ("torchvision models/resnet.py", _resnet_keys("downsample", "fc"))
    for name in ("resnet18_cifar", "resnet34_cifar", "resnet50_cifar"):
        sources[name] = (rep + "resnetv2.py", _resnet_keys("shortcut", "linear"))
    for name in wrn.CONFIGS:
        sources[name] = (rep + "wrn.py", _wrn_key)
    for name in vgg.CONFIGS:
        sources[name] = (rep + f"vgg.py ({name}_bn)", _vgg_key)
    sources["mobilenetv2"] = (rep + "mobilenetv2.py (mobile_half)", _mobilenetv2_key)
    sources["shufflenetv1"] = (rep + "ShuffleNetv1.py (ShuffleV1)", _shufflenetv1_key)
    sources["shufflenetv2"] = (rep + "ShuffleNetv2.py (ShuffleV2)", _shufflenetv2_key)
    return sources


def importable():
    """The zoo names `from_pytorch` can fill, sorted."""
    return sorted(n for n in _sources() if n in models.available())


def reference_of(name):
    """The PyTorch definition whose state_dict zoo model `name` reads."""
    return _source(name)[0]


def _source(name):
    sources = _sources()
    if name not in sources or name not in models.available():
        close = difflib.get_close_matches(str(name), importable(), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"No PyTorch import for model '{name}'.{hint} Importable zoo models: "
            f"{importable()}."
        )
    return sources[name]


# -- reading checkpoints -----------------------------------------------------


def _describe(checkpoint):
    if isinstance(checkpoint, (str, os.PathLike)):
        return f"Checkpoint '{os.fspath(checkpoint)}'"
    return "The checkpoint dict"


def load_state_dict(checkpoint):
    """The state_dict in `checkpoint` as `{key: numpy array}`.

    Args:
        checkpoint: a path (`.npz`: NumPy; anything else: `torch.load` with
            `weights_only=True` on the CPU), or a mapping. A mapping holding
            `'model'` (RepDistiller/mdistiller) or `'state_dict'` is
            unwrapped; a `module.` prefix is removed; `num_batches_tracked`
            entries are dropped.

    Raises:
        ImportError: a PyTorch file without torch installed (names the extra).
        FileNotFoundError: no such file.
        ValueError: an unreadable (truncated, corrupt) file, or contents that
            are not a state_dict.
    """
    where = _describe(checkpoint)
    if isinstance(checkpoint, (str, os.PathLike)):
        content = _read_file(os.fspath(checkpoint))
    elif isinstance(checkpoint, collections.abc.Mapping):
        content = checkpoint
    else:
        raise TypeError(
            f"checkpoint must be a path or a dict of arrays, got {type(checkpoint).__name__}."
        )
    for wrapper in ("model", "state_dict"):
        if isinstance(content.get(wrapper), collections.abc.Mapping):
            content = content[wrapper]
            break
    state = {}
    for key, value in content.items():
        key = str(key)
        key = key[len("module."):] if key.startswith("module.") else key
        if key.endswith(IGNORED_SUFFIXES):
            continue
        array = _to_numpy(value)
        if array is None:
            raise ValueError(
                f"{where}: key '{key}' holds a {type(value).__name__}, not a "
                "tensor. Pass a state_dict, {'model': state_dict, ...} or a .npz of it."
            )
        if key in state:
            raise ValueError(f"{where}: key '{key}' appears twice (with and "
                             "without the 'module.' prefix).")
        state[key] = array
    if not state:
        raise ValueError(f"{where} holds no tensors.")
    return state


def _to_numpy(value):
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()  # bfloat16/half have no (exact) NumPy view
        return tensor.numpy()
    return None


def _read_file(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint '{path}': no such file.")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
            raise ValueError(
                f"Checkpoint '{path}' is not a readable .npz (truncated or corrupt?): "
                f"{type(error).__name__}: {error}"
            ) from error
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"Reading the PyTorch checkpoint '{path}' needs torch, which kerakd installs "
            f"only with its torch extra: {TORCH_EXTRA} (or pip install torch==2.13.0). "
            "Without torch, convert it elsewhere to a .npz of the same keys "
            "(np.savez(out, **{k: v.numpy() for k, v in state_dict.items()})) and pass that."
        ) from error
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower() and "weights_only" not in str(error):
            raise ValueError(
                f"Checkpoint '{path}' is not a readable PyTorch file (truncated or "
                f"corrupt?): {error}"
            ) from error
        raise ValueError(
            f"Checkpoint '{path}' holds Python objects besides tensors (e.g. the argparse "
            "Namespace of RepDistiller's *_last.pth), which torch.load refuses to unpickle "
            "safely. Use ckpt_epoch_240.pth or *_best.pth; or, if you trust the file, "
            "load it yourself (torch.load(path, map_location='cpu', "
            "weights_only=False)['model']) and pass that dict."
        ) from error
    except Exception as error:  # noqa: BLE001 - zip/EOF/runtime errors: unreadable
        raise ValueError(
            f"Checkpoint '{path}' is not a readable PyTorch file (truncated or corrupt?): "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(content, collections.abc.Mapping):
        raise ValueError(
            f"Checkpoint '{path}' holds a {type(content).__name__}, not a state_dict: save "
            "model.state_dict() (or {'model': model.state_dict()}), not the model."
        )
    return content


# -- filling the model -------------------------------------------------------


def _layer_weights(layer, module):
    """[(Keras variable, checkpoint key, PyTorch -> Keras transform)] of `layer`."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        rows = [(layer.kernel, f"{module}.weight", lambda w: w.transpose(2, 3, 0, 1))]
    elif isinstance(layer, keras.layers.Conv2D):
        rows = [(layer.kernel, f"{module}.weight", lambda w: w.transpose(2, 3, 1, 0))]
    elif isinstance(layer, keras.layers.Dense):
        rows = [(layer.kernel, f"{module}.weight", lambda w: w.T)]
    elif isinstance(layer, keras.layers.BatchNormalization):
        rows = [(layer.gamma, f"{module}.weight", None), (layer.beta, f"{module}.bias", None),
                (layer.moving_mean, f"{module}.running_mean", None),
                (layer.moving_variance, f"{module}.running_var", None)]
        return [row for row in rows if row[0] is not None]
    else:
        return None
    if getattr(layer, "use_bias", False):
        rows.append((layer.bias, f"{module}.bias", None))
    return rows


def _weight_name(layer, variable):
    return f"{layer.name}/{variable.name}"


def _fill_plan(model, state, key_of):
    """The (variable, array) pairs that fill `model`, and the problems found."""
    plan, missing, shapes, unmapped, used = [], [], [], [], {}
    filled = set()
    for layer in model.layers:  # zoo models are flat functional models
        if not layer.weights:
            continue
        module = key_of(layer.name)
        rows = _layer_weights(layer, module) if module is not None else None
        if rows is None:
            for variable in layer.weights:
                unmapped.append(f"zoo weight '{_weight_name(layer, variable)}' "
                                f"({type(layer).__name__}) has no checkpoint counterpart")
            continue
        for variable, key, transform in rows:
            weight = _weight_name(layer, variable)
            filled.add(id(variable))
            if key in used:
                unmapped.append(f"zoo weights '{used[key]}' and '{weight}' both read "
                                f"checkpoint key '{key}'")
                continue
            used[key] = weight
            if key not in state:
                missing.append(f"zoo weight '{weight}' {tuple(variable.shape)} needs checkpoint "
                               f"key '{key}', which is not in the checkpoint")
                continue
            array = state[key]
            value = transform(array) if transform is not None and array.ndim >= 2 else array
            if tuple(value.shape) != tuple(variable.shape):
                shapes.append(f"zoo weight '{weight}' has shape {tuple(variable.shape)}, but "
                              f"checkpoint key '{key}' {tuple(array.shape)} gives "
                              f"{tuple(value.shape)} in Keras layout")
                continue
            plan.append((variable, value))
    for variable in model.weights:
        if id(variable) not in filled:
            unmapped.append(f"zoo weight '{variable.path}' is filled by no rule")
    leftover = sorted(set(state) - set(used))
    return plan, missing, shapes, unmapped, leftover, used


def _listing(title, lines):
    if not lines:
        return []
    shown = [f"  {line}" for line in lines[:MAX_LISTED]]
    if len(lines) > MAX_LISTED:
        shown.append(f"  ... and {len(lines) - MAX_LISTED} more")
    return [f"{title} ({len(lines)}):", *shown]


def from_pytorch(name, checkpoint, num_classes=100, input_shape=(32, 32, 3)):
    """Zoo model `name` with the weights of a PyTorch checkpoint.

    Args:
        name: a zoo model name (`importable()`), e.g. `"resnet32x4"`.
        checkpoint: a `.pth`/`.pt` path (needs torch: `pip install -e ".[torch]"`),
            a `.npz` path, or a dict of arrays/tensors; `{'model': state_dict, ...}`
            or a bare state_dict, with or without a `module.` prefix.
        num_classes: classes of the checkpoint's classifier.
        input_shape: `(H, W, C)` of the images the model will read.

    Returns:
        The functional `keras.Model` (zoo layers, `kerakd.nn.BatchNormalization`);
        `kerakd.models.core_keras(model).save(path)` writes a teacher that
        loads without kerakd.

    Raises:
        ValueError: an unknown name or an unreadable checkpoint.
        CheckpointMismatchError: a checkpoint key left over, a zoo weight
            without its key, or a shape mismatch (each named).
        ImportError: a PyTorch file without torch.
    """
    _source(name)  # an unknown name fails before any file is read
    return from_state_dict(name, load_state_dict(checkpoint), num_classes, input_shape,
                           source=_describe(checkpoint))


def from_state_dict(name, state, num_classes=100, input_shape=(32, 32, 3), source=None):
    """`from_pytorch` for a `load_state_dict` result; `source` names it in errors."""
    reference, key_of = _source(name)
    model = models.get(name, num_classes=num_classes, input_shape=tuple(input_shape))
    plan, missing, shapes, unmapped, leftover, used = _fill_plan(model, state, key_of)
    if missing or shapes or unmapped or leftover:
        expected = sorted(used)
        left = []
        for key in leftover:
            close = difflib.get_close_matches(key, [k for k in expected if k not in state], n=1,
                                              cutoff=0.9)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            left.append(f"checkpoint key '{key}' {tuple(state[key].shape)} fills no zoo "
                        f"weight{hint}")
        hints = []
        classifier = key_of("logits")
        if f"{classifier}.bias" in state and state[f"{classifier}.bias"].ndim == 1:
            classes = state[f"{classifier}.bias"].shape[0]
            if classes != num_classes:
                hints.append(f"The checkpoint's classifier has {classes} classes: pass "
                             f"num_classes={classes}.")
        if len(missing) + len(left) > len(expected) // 2:
            hints.append(f"Most keys differ: is the checkpoint really a {reference} '{name}'?")
        lines = [f"{source or 'The checkpoint'} does not fit zoo model '{name}' "
                 f"({num_classes} classes; reference {reference}):", *hints]
        lines += _listing("missing", missing)
        lines += _listing("wrong shape", shapes)
        lines += _listing("left over", left)
        lines += _listing("unmapped", unmapped)
        raise CheckpointMismatchError("\n".join(lines))
    for variable, value in plan:
        variable.assign(value.astype(variable.dtype))
    return model
