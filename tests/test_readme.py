"""README's set-up commands and Python example are what they say."""

import os
import re
import subprocess
import sys

import pytest

# Subprocesses of minutes: skipped by the quick command (README, "Set up").
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(__file__))
README = open(os.path.join(ROOT, "README.md")).read()


def python_example():
    section = README.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_second():
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", setup, re.S)
    assert len(commands) == 2, commands
    assert "kerakd.quickstart" in commands[0]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert commands[1].strip() in ci


def test_python_example_is_short_and_distills_resnet8x4_from_resnet32x4(tmp_path):
    code = python_example()
    lines = [l for l in code.splitlines() if l.strip() and not l.strip().startswith("#")]
    assert len(lines) <= 12
    assert "resnet32x4" in code and "resnet8x4" in code and ".fit(" in code
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "student.keras").exists()
