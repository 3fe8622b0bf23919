"""docs/vanishing-gradients.ipynb runs, top to bottom, in a fresh kernel (nbclient), and the outputs
committed with it are the ones it produces now: the notebook cannot rot.

The notebook checks its own central claim in a cell (the sigmoid stack's measured per-layer factor
against the mean-field prediction), so a wrong number fails here as a cell error."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # executes the notebook, which trains its runs

nbformat = pytest.importorskip("nbformat", reason="the dev extra is not installed (pip install -e '.[dev]')")
nbclient = pytest.importorskip("nbclient", reason="the dev extra is not installed (pip install -e '.[dev]')")
pytest.importorskip("ipykernel", reason="the dev extra is not installed (pip install -e '.[dev]')")

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "vanishing-gradients.ipynb"


def texts(cell) -> list[str]:
    """A code cell's outputs as text: streams, and the plain-text form of results."""
    out = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            out.append(output["text"])
        elif "data" in output:
            out.append(output["data"].get("text/plain", ""))
    return out


def has_image(cell) -> bool:
    return any("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    committed = nbformat.read(NOTEBOOK, as_version=4)
    notebook = copy.deepcopy(committed)
    cwd = tmp_path_factory.mktemp("notebook")  # its runs are written here, not into docs/
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # the kernel inherits it
        nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return committed, notebook, cwd


def test_the_notebook_runs_and_writes_its_runs(executed):
    _, notebook, cwd = executed
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o["output_type"] == "error"]
    assert errors == []
    assert sorted(p.name for p in (cwd / "runs").iterdir()) == ["hand-made", "relu", "sigmoid"]


def test_the_committed_outputs_are_current(executed):
    committed, notebook, _ = executed
    code = [(old, new) for old, new in zip(committed.cells, notebook.cells) if new.cell_type == "code"]
    assert all(old.source == new.source for old, new in code)
    # every code cell that shows something was committed with it
    assert [bool(old.get("outputs")) for old, _ in code] == [bool(new.get("outputs")) for _, new in code]
    assert sum(has_image(old) for old, _ in code) == sum(has_image(new) for _, new in code) == 1
    # the tables and the printed prediction are the same numbers (run directories and figures,
    # which carry times and timestamps, are left out)
    numbers = [(old, new) for old, new in code if any(word in new.source for word in (".table[", "predicted", "profile = "))]
    assert len(numbers) == 4  # the depth profile, the two comparison tables, the prediction
    for old, new in numbers:
        assert texts(old) == texts(new) != [], new.source.splitlines()[0]


def test_the_story_the_notebook_tells(executed):
    _, notebook, _ = executed
    shown = "\n".join(text for cell in notebook.cells if cell.cell_type == "code" for text in texts(cell))
    assert "vanishing" in shown and "stable" in shown
    assert "hand-made" in shown
