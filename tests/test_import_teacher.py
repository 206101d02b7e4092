"""Importing PyTorch teachers (`kerakd.models.from_pytorch`, `kerakd-import-teacher`).

Each zoo family is checked against a PyTorch definition of its reference
architecture (kerakd/torch_reference.py) with random weights and
randomised BatchNorm statistics, saved in RepDistiller's checkpoint format:
the converted model must give the same stage outputs and logits in inference
mode (max error <= 1e-4 x max(1, |z|)) and the same argmax on 32 images.
"""

import argparse
import configparser
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import torch

import kerakd
from kerakd import flags as kerakd_flags
from kerakd import torch_reference as ref
from kerakd.data.sources import NORMALISATION, DatasetInfo
from kerakd.models import pytorch_import
from kerakd.models.pytorch_import import CheckpointMismatchError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_IMAGES = 32

# (zoo name, image size): one small model per family, every family covered.
FAMILIES = [
    ("resnet8", 32), ("resnet8x4", 32), ("wrn_16_1", 32), ("vgg8", 32),
    ("mobilenetv2", 32), ("shufflenetv1", 32), ("shufflenetv2", 32),
    ("resnet50_cifar", 32), ("resnet18", 64), ("resnet50", 32),
]
IMAGENET = {"resnet18", "resnet34", "resnet50"}  # torchvision's, 1000 classes


@pytest.fixture(autouse=True)
def _torch_threads():
    # One thread: on a shared 2-core machine (CI's pytest -n 2, TensorFlow's
    # own pool) more threads contend and run many times slower.
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(size, seed, n=NUM_IMAGES):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator)


def reference(name, size=32, num_classes=100):
    """A randomised reference model of zoo model `name`."""
    net = ref.build(name, num_classes, size)
    return ref.randomize(net, images(size, seed=100, n=8))


def save_checkpoint(net, directory, name="resnet8"):
    """`net` saved as RepDistiller's train_teacher.py saves it."""
    path = directory / f"{name}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 240, "model": net.state_dict(), "accuracy": 70.0, "optimizer": {}},
               path)
    return path


def nhwc(tensor):
    array = tensor.detach().numpy()
    return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


def assert_same_outputs(net, model, size, seed=1):
    x = images(size, seed)
    with torch.no_grad():
        taps, logits = net(x)
    names = [*taps, "logits"]
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    outputs = probe([nhwc(x)], training=False)
    for name, expected, got in zip(names, [*taps.values(), logits], outputs):
        expected, got = nhwc(expected), keras.ops.convert_to_numpy(got)
        assert got.shape == expected.shape, name
        error = float(np.abs(got - expected).max())
        bound = 1e-4 * max(1.0, float(np.abs(expected).max()))
        assert error <= bound, f"{name}: max error {error:.3g} > {bound:.3g}"
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    return got


@pytest.mark.parametrize("name, size", FAMILIES, ids=[n for n, _ in FAMILIES])
def test_converted_teacher_matches_its_pytorch_reference(name, size, tmp_path):
    num_classes = 1000 if name in IMAGENET else 100
    net = reference(name, size, num_classes)
    path = save_checkpoint(net, tmp_path, name)
    model = kerakd.models.from_pytorch(name, str(path), num_classes=num_classes,
                                       input_shape=(size, size, 3))
    assert_same_outputs(net, model, size)


# The published CIFAR-100 teachers (docs/teachers.md) and the other deep
# members of the families above: every key is mapped, every weight filled.
@pytest.mark.parametrize("name", ["resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13",
                                  "resnet34", "resnet18_cifar"])
def test_every_key_of_the_published_teachers_is_mapped(name):
    num_classes, size = (1000, 64) if name in IMAGENET else (100, 32)
    state = ref.build(name, num_classes).state_dict()
    model = kerakd.models.from_pytorch(name, state, num_classes, (size, size, 3))
    classifier = {"vgg13": "classifier", "resnet18_cifar": "linear"}.get(name, "fc")
    np.testing.assert_array_equal(model.get_layer("logits").kernel.numpy(),
                                  state[f"{classifier}.weight"].numpy().T)
    stem, key = ("g0_conv1", "block0.0") if name == "vgg13" else ("stem_conv", "conv1")
    np.testing.assert_array_equal(model.get_layer(stem).kernel.numpy(),
                                  state[f"{key}.weight"].numpy().transpose(2, 3, 1, 0))


def test_importable_covers_every_cifar_family_and_the_imagenet_resnets():
    names = pytorch_import.importable()
    expected = {"resnet8", "resnet56", "resnet110", "resnet8x4", "resnet32x4", "wrn_16_1",
                "wrn_40_2", "vgg8", "vgg13", "vgg19", "mobilenetv2", "shufflenetv1",
                "shufflenetv2", "resnet50_cifar", "resnet18", "resnet34", "resnet50"}
    assert expected <= set(names)
    assert set(names) <= set(kerakd.models.available())


@pytest.fixture(scope="module")
def resnet8(tmp_path_factory):
    """A randomised reference resnet8, its checkpoint, and its imported model."""
    torch.manual_seed(0)
    net = reference("resnet8")
    path = save_checkpoint(net, tmp_path_factory.mktemp("ckpt"))
    model = kerakd.models.from_pytorch("resnet8", str(path))
    return net, path, [w.copy() for w in model.get_weights()]


def assert_same_weights(model, weights):
    for got, expected in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_module_prefix_bare_state_dict_npz_and_legacy_format_load_alike(resnet8, tmp_path):
    net, _, weights = resnet8
    state = net.state_dict()
    prefixed = {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 240}
    assert_same_weights(kerakd.models.from_pytorch("resnet8", prefixed), weights)
    assert_same_weights(kerakd.models.from_pytorch("resnet8", dict(state)), weights)
    npz = tmp_path / "resnet8.npz"
    np.savez(npz, **{k: v.numpy() for k, v in state.items()})
    assert_same_weights(kerakd.models.from_pytorch("resnet8", str(npz)), weights)
    legacy = tmp_path / "legacy.pth"  # PyTorch < 1.6's format, as of RepDistiller's files
    torch.save({"model": state}, legacy, _use_new_zipfile_serialization=False)
    assert_same_weights(kerakd.models.from_pytorch("resnet8", str(legacy)), weights)
    bare = tmp_path / "bare.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, bare)
    assert_same_weights(kerakd.models.from_pytorch("resnet8", bare), weights)


def test_an_unknown_architecture_name_fails_naming_it(resnet8):
    with pytest.raises(ValueError, match=r"No PyTorch import for model 'resnet9'.*resnet8"):
        kerakd.models.from_pytorch("resnet9", str(resnet8[1]))


def test_a_checkpoint_of_another_architecture_fails_naming_the_keys(resnet8):
    with pytest.raises(CheckpointMismatchError) as error:
        kerakd.models.from_pytorch("resnet14", str(resnet8[1]))
    message = str(error.value)
    assert "zoo model 'resnet14'" in message
    assert "zoo weight 's1b2_conv1/kernel'" in message and "'layer1.1.conv1.weight'" in message
    wrn = ref.build("wrn_16_1", 100).state_dict()
    with pytest.raises(CheckpointMismatchError, match="really a .*'resnet8'"):
        kerakd.models.from_pytorch("resnet8", wrn)


def test_a_truncated_file_fails_naming_it(resnet8, tmp_path):
    data = resnet8[1].read_bytes()
    for suffix, content in ((".pth", data), (".npz", None)):
        path = tmp_path / f"truncated{suffix}"
        if content is None:
            np.savez(path, **{k: v.numpy() for k, v in resnet8[0].state_dict().items()})
            content = path.read_bytes()
        path.write_bytes(content[: len(content) // 2])
        with pytest.raises(ValueError, match=rf"'{path}' is not a readable .*truncated"):
            kerakd.models.from_pytorch("resnet8", str(path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        kerakd.models.from_pytorch("resnet8", str(tmp_path / "absent.pth"))


def test_one_renamed_key_fails_naming_the_weight_and_both_keys(resnet8):
    state = dict(resnet8[0].state_dict())
    state["layer2.0.conv_1.weight"] = state.pop("layer2.0.conv1.weight")
    with pytest.raises(CheckpointMismatchError) as error:
        kerakd.models.from_pytorch("resnet8", {"model": state})
    message = str(error.value)
    assert ("zoo weight 's2b1_conv1/kernel' (3, 3, 16, 32) needs checkpoint key "
            "'layer2.0.conv1.weight', which is not in the checkpoint") in message
    assert ("checkpoint key 'layer2.0.conv_1.weight' (32, 16, 3, 3) fills no zoo weight "
            "(did you mean 'layer2.0.conv1.weight'?)") in message


def test_a_wrong_shape_or_class_count_fails_naming_both(resnet8):
    state = dict(resnet8[0].state_dict())
    with pytest.raises(CheckpointMismatchError) as error:
        kerakd.models.from_pytorch("resnet8", state, num_classes=10)
    message = str(error.value)
    assert ("zoo weight 'logits/kernel' has shape (64, 10), but checkpoint key "
            "'fc.weight'") in message
    assert "pass num_classes=100" in message
    state["bn1.running_var"] = torch.ones(17)
    with pytest.raises(CheckpointMismatchError,
                       match=r"'stem_bn/moving_variance'.*'bn1.running_var'"):
        kerakd.models.from_pytorch("resnet8", state)


def test_a_last_checkpoint_with_python_objects_is_refused_safely(resnet8, tmp_path):
    path = tmp_path / "resnet8_last.pth"
    torch.save({"model": resnet8[0].state_dict(), "opt": argparse.Namespace(lr=0.05)}, path)
    with pytest.raises(ValueError, match="weights_only=False"):
        kerakd.models.from_pytorch("resnet8", str(path))


@pytest.mark.slow
def test_kerakd_imports_without_torch_and_names_the_extra(resnet8, tmp_path):
    npz = tmp_path / "resnet8.npz"
    np.savez(npz, **{k: v.numpy() for k, v in resnet8[0].state_dict().items()})
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import kerakd\n"
        f"model = kerakd.models.from_pytorch('resnet8', {str(npz)!r})\n"
        "print('npz ok', model.count_params())\n"
        "try:\n"
        f"    kerakd.models.from_pytorch('resnet8', {str(resnet8[1])!r})\n"
        "except ImportError as error:\n"
        "    print('refused:', error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "npz ok" in result.stdout
    assert 'refused:' in result.stdout and 'pip install -e ".[torch]"' in result.stdout


@pytest.mark.slow
def test_cli_writes_a_teacher_that_loads_without_kerakd_and_train_accepts(resnet8, tmp_path):
    from kerakd import import_teacher, training

    net, path, _ = resnet8
    output = tmp_path / "teachers" / "resnet8_cifar100.keras"
    import_teacher.main(["--model=resnet8", f"--checkpoint={path}", "--num_classes=100",
                         f"--output={output}"])
    x = nhwc(images(32, seed=3))
    with torch.no_grad():
        expected = net(images(32, seed=3))[1].numpy()
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys; sys.modules['kerakd'] = None\n"
        "import keras, numpy as np\n"
        f"model = keras.models.load_model({str(output)!r}, compile=False)\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "z = keras.ops.convert_to_numpy(model(x, training=False))\n"
        f"np.save({str(tmp_path / 'z.npy')!r}, z)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.load(tmp_path / "z.npy")
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    # kerakd-train --teacher= takes it: the flag checks and the teacher loader.
    flag_values = kerakd_flags.parse([
        "kerakd-train", "--method=kd", f"--teacher={output}", "--student=resnet8",
        "--dataset=cifar100", f"--model_dir={tmp_path / 'run'}"])
    kerakd_flags.check_flags(flag_values)
    kerakd_flags.check_files(flag_values)
    mean, std = NORMALISATION["cifar100"]
    info = DatasetInfo(name="cifar100", num_classes=100, image_shape=(32, 32, 3), mean=mean,
                       std=std, style="small")
    teacher = training._load_teacher(str(output), info, "cifar100")
    assert teacher.outputs[0].shape[-1] == 100


def test_cli_reports_errors_and_reads_the_class_count(resnet8, tmp_path, capsys):
    from kerakd import import_teacher

    with pytest.raises(SystemExit, match="No PyTorch import for model 'resnet9'"):
        import_teacher.main(["--model=resnet9", f"--checkpoint={resnet8[1]}",
                             f"--output={tmp_path / 'x.keras'}"])
    with pytest.raises(SystemExit, match=r"--output=.*x\.h5: .*\.keras"):
        import_teacher.main(["--model=resnet8", f"--checkpoint={resnet8[1]}",
                             f"--output={tmp_path / 'x.h5'}"])
    output = tmp_path / "x.keras"
    import_teacher.main(["--model=resnet8", f"--checkpoint={resnet8[1]}", f"--output={output}"])
    assert "100 classes" in capsys.readouterr().out and output.exists()


def test_the_console_script_and_module_are_declared():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    assert "kerakd-import-teacher = kerakd.import_teacher:run" in setup["options.entry_points"][
        "console_scripts"]
    extras = setup["options.extras_require"]
    # Always the exact pin: a plain `torch` can pull a multi-GB CUDA build.
    assert extras["torch"].split() == ["torch==2.13.0"]
    assert "torch==2.13.0" in extras["test"].split()
    result = subprocess.run([sys.executable, "-m", "kerakd.import_teacher", "--help"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0 and "--checkpoint" in result.stdout, result.stderr[-2000:]


def test_resnet50_cifar_matches_the_reference_size_and_initialization():
    model = kerakd.models.get("resnet50_cifar", num_classes=100)
    net = ref.build("resnet50_cifar", 100)
    torch_params = sum(p.numel() for p in net.parameters())
    keras_params = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert keras_params == torch_params == 23_705_252
    assert [tuple(model.get_layer(f"stage{i}").output.shape[1:]) for i in (1, 2, 3, 4)] == [
        (32, 32, 256), (16, 16, 512), (8, 8, 1024), (4, 4, 2048)]
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            init = layer.kernel_initializer.get_config()
            assert (init["mode"], init["distribution"], init["scale"]) == (
                "fan_out", "untruncated_normal", 2.0), layer.name
    dense = model.get_layer("logits")
    bound = 2048 ** -0.5
    assert dense.kernel_initializer.get_config()["mode"] == "fan_in"
    assert np.abs(dense.bias.numpy()).max() <= bound


def test_cifar100_configs_name_the_imported_teacher_they_expect():
    import glob
    import re

    configs = sorted(glob.glob(os.path.join(ROOT, "configs", "*.flags")))
    checked = 0
    for path in configs:
        text = open(path).read()
        match = re.search(r"^--teacher=(teachers/(\w+)_cifar100\.keras)$", text, re.M)
        if match:
            header = "".join(line for line in text.splitlines(True) if line.startswith("#"))
            assert f"kerakd-import-teacher --model={match.group(2)}" in header, path
            assert f"--output={match.group(1)}" in header, path
            assert match.group(2) in pytorch_import.importable()
            checked += 1
    assert checked >= 10
