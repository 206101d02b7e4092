"""`kerakd-train` checks its flags before TensorFlow loads: the committed catalog
of methods and models is the live one, and the checks run without TensorFlow."""

import inspect
import json
import os
import subprocess
import sys

import pytest

import kerakd
from kerakd import catalog
from kerakd import flags as kerakd_flags
from kerakd.methods.base import Method

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_TENSORFLOW = "kerakd test: TensorFlow was imported"


def test_the_committed_catalog_is_the_live_one():
    live = json.loads(json.dumps(catalog.describe()))  # tuples as JSON has them
    assert catalog.committed() == live, (
        "kerakd/catalog.json is out of date: run `python -m kerakd.catalog`.")
    # Same argument order too: --help lists a method's flags in it.
    for name, entry in live["methods"].items():
        assert list(catalog.committed()["methods"][name]["arguments"]) == list(
            entry["arguments"])


def test_every_default_reads_back_as_it_is():
    for name in kerakd.methods.available():
        factory = kerakd.methods.registry.factory(name)
        for parameter in inspect.signature(factory).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            entry = catalog.committed()["methods"][name]["arguments"][parameter.name]
            value = catalog.default(entry)
            assert value == parameter.default and type(value) is type(parameter.default)


class _CatalogToy(Method):
    """A method registered at run time.

    Args:
        width: how wide (default 3).
        scale: a factor.
    """

    requires_teacher = False

    def __init__(self, width=3, scale=None, **kwargs):
        super().__init__(**kwargs)
        self.width, self.scale = width, scale


class _NotALiteral(Method):
    def __init__(self, schedule=lambda epoch: 1.0, **kwargs):
        super().__init__(**kwargs)


def test_a_method_registered_at_run_time_gets_flags(monkeypatch):
    registry = kerakd.methods.registry
    monkeypatch.setattr(registry, "_factories", {**registry._factories,
                                                  "catalog_toy": _CatalogToy})
    assert kerakd_flags.method_arguments("catalog_toy") == {"width": 3, "scale": None}
    flag_values = kerakd_flags.parse(["kerakd-train", "--method=catalog_toy",
                                      "--catalog_toy_width=5", "--model_dir=x"])
    kerakd_flags.check_flags(flag_values)
    assert kerakd_flags.method_hparams(flag_values) == {"catalog_toy": {"width": 5}}
    assert "how wide" in flag_values["catalog_toy_width"].help


def test_a_default_no_flag_can_hold_is_refused_when_described():
    with pytest.raises(TypeError, match="'schedule'.*no flag can hold"):
        catalog.describe_method("not_a_literal", _NotALiteral)


def _command(tmp_path, *args):
    """`python -m kerakd.train ARGS` where importing TensorFlow fails loudly."""
    fake = tmp_path / "no_tensorflow" / "tensorflow"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text(f"raise ImportError({FAKE_TENSORFLOW!r})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(fake.parent), REPOSITORY, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "kerakd.train", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("args, message", [
    (["--method=kd", "--model_dir=run"], "--method=kd distills from a teacher"),
    (["--method=kdd", "--model_dir=run"], "Did you mean ['kd'"),
    (["--method=kd", "--kd_temprature=2", "--model_dir=run"],
     "Did you mean: kd_temperature"),
    (["--method=kd", "--fitnet_stage=2", "--teacher=t.keras", "--model_dir=run"],
     "--fitnet_stage is a flag of method 'fitnet'"),
    (["--student=resnet9", "--model_dir=run"], "--student=resnet9: not a zoo model"),
    (["--dataset=fashionmnist", "--model_dir=run"], "Did you mean --dataset=fashion_mnist"),
    (["--dataset=fashion_mnist", "--data_dir=empty", "--model_dir=run"],
     "lacks the IDX files"),
    (["--method=kd", "--teacher=missing.keras", "--model_dir=run"],
     "--teacher=missing.keras: no such file"),
    (["--model_dir=a_file"], "--model_dir=a_file is a file"),
    (["--flagfile=typo.flags"], "typo.flags: Unknown command line flag 'learnig_rate'"),
    (["--student_taps=features:", "--model_dir=run"], "--student_taps"),
])
def test_bad_flags_fail_before_tensorflow_loads(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("")
    (tmp_path / "typo.flags").write_text("--learnig_rate=0.1\n--model_dir=run\n")
    done = _command(tmp_path, *args)
    assert done.returncode == 1, done.stderr
    assert message in done.stderr
    assert FAKE_TENSORFLOW not in done.stderr


def test_help_needs_no_tensorflow(tmp_path):
    done = _command(tmp_path, "--help", "--method=dkd")
    assert done.returncode == 0, done.stderr
    assert "--dkd_tckd_weight" in done.stdout


def test_good_flags_load_tensorflow_only_after_the_checks(tmp_path):
    # The fake TensorFlow fails at its import: the checks have passed by then.
    done = _command(tmp_path, "--method=none", "--dataset=synthetic", "--model_dir=run")
    assert done.returncode != 0
    assert FAKE_TENSORFLOW in done.stderr
    assert not (tmp_path / "run").exists()
