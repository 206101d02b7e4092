"""Every `configs/**/*.flags` file parses with the real flags and passes their checks."""

import glob
import os

import pytest
from absl import flags

from kerakd import flags as kerakd_flags

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
FILES = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.flags"), recursive=True))


def parse(path):
    return kerakd_flags.parse(["kerakd-train", f"--flagfile={path}"])


def test_configs_exist():
    names = {os.path.relpath(f, CONFIGS) for f in FILES}
    expected = {"none.flags", "kd.flags", "fitnet.flags", "at.flags", "fmnist/teacher.flags"}
    expected |= {f"fmnist/{m}.flags" for m in ("none", "kd", "fitnet", "at")}
    assert expected <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.relpath(p, CONFIGS))
def test_config_parses_and_checks(path):
    flag_values = parse(path)
    kerakd_flags.check_flags(flag_values)
    assert flag_values["model_dir"].present, "a config names its --model_dir"


@pytest.mark.parametrize("method", ["none", "kd", "fitnet", "at"])
def test_cifar100_configs_follow_the_papers_recipe(method):
    fv = parse(os.path.join(CONFIGS, f"{method}.flags"))
    assert (fv.dataset, fv.student, fv.epochs, fv.batch_size) == ("cifar100", "resnet8x4", 240, 64)
    assert (fv.optimizer, fv.learning_rate, fv.momentum) == ("sgd", 0.05, 0.9)
    assert fv.weight_decay == 5e-4
    assert (kerakd_flags.lr_milestones(fv), fv.lr_decay) == ([150, 180, 210], 0.1)
    if method != "none":
        assert fv.teacher == "teachers/resnet32x4_cifar100.keras"


@pytest.mark.parametrize("method", ["none", "kd", "fitnet", "at"])
def test_fmnist_students_read_the_fmnist_teacher(method):
    teacher = parse(os.path.join(CONFIGS, "fmnist", "teacher.flags"))
    student = parse(os.path.join(CONFIGS, "fmnist", f"{method}.flags"))
    assert student.dataset == teacher.dataset == "fashion_mnist"
    if method != "none":
        assert student.teacher == os.path.join(teacher.model_dir, "student.keras")


def test_a_typo_in_a_config_fails(tmp_path):
    path = tmp_path / "typo.flags"
    path.write_text("--method=kd\n--kd_temprature=4\n--model_dir=runs/x\n")
    with pytest.raises(flags.Error, match="kd_temprature"):
        parse(path)
