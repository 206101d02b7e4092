"""The Colab notebooks run headless, top to bottom, without a cell error.

Each notebook runs in smoke mode (`KERAKD_SMOKE=1`: small generated images,
one short epoch) in a fresh python3 kernel, in a temporary directory so that
the files it writes (saved models, TensorBoard logs) go nowhere else. The
committed notebooks keep the outputs of a real run; the test executes a
copy and leaves them untouched.
"""

import glob
import os

import pytest

# Subprocesses of minutes: skipped by the quick command (README, "Set up").
pytestmark = pytest.mark.slow

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

COLAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colab")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLAB, "*.ipynb")))
CELL_TIMEOUT_S = 300


def test_every_notebook_is_collected():
    names = {os.path.basename(path) for path in NOTEBOOKS}
    assert {"quickstart.ipynb", "self_distillation.ipynb", "your_own_models.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_in_smoke_mode(path, tmp_path, monkeypatch):
    # The kernel inherits this process's environment when it starts.
    monkeypatch.setenv("KERAKD_SMOKE", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        record_timing=False,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    # Raises CellExecutionError, with the cell's source and traceback, on an error.
    client.execute()
    errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors, errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_notebook_carries_outputs_and_no_errors(path):
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert any(cell.outputs for cell in code_cells), "run the notebook before committing it"
    for cell in code_cells:
        assert all(output.get("output_type") != "error" for output in cell.outputs), cell.source
