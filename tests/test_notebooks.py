"""Every chapter notebook follows the conventions and carries fresh `book`-profile outputs.

These checks read the committed notebooks; they do not execute them (``pytest --nbval`` does that).
"""

from pathlib import Path

import nbformat
import pytest

from utils import provenance

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
NOTEBOOKS = [p for p in NOTEBOOKS if not p.name.endswith(".failed.ipynb")]

# The standard first code cell (see CONTRIBUTING.md): on Colab or a fresh machine it installs the
# helper package without reinstalling torch; elsewhere it does nothing.
SETUP_CELL = """\
# Colab / fresh machine: install the book's helper package (never reinstalls the torch you have).
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("utils") is None or importlib.util.find_spec("utils.nb") is None:
    repo = "https://github.com/llm-training-book/llm-training-book"
    subprocess.run(["git", "clone", "--depth", "1", repo, "llm-training-book"], check=True)
    pip_install = [sys.executable, "-m", "pip", "install", "-q", "-e", "llm-training-book"]
    subprocess.run(pip_install, check=True)
    sys.path.insert(0, "llm-training-book")  # the editable install is only seen after a restart"""


def test_there_are_chapter_notebooks():
    assert NOTEBOOKS, "no chapter notebooks found in notebooks/"


def _ids(paths):
    return [p.name for p in paths]


@pytest.fixture(params=NOTEBOOKS, ids=_ids(NOTEBOOKS))
def notebook(request):
    return request.param, nbformat.read(request.param, as_version=4)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_starts_with_title_and_colab_link(notebook):
    path, nb = notebook
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert (
        f"colab.research.google.com/github/llm-training-book/llm-training-book/blob/main/notebooks/{path.name}"
        in first.source
    )


def test_standard_setup_then_parameters_cell(notebook):
    _, nb = notebook
    code = _code_cells(nb)
    assert code[0].source.strip() == SETUP_CELL
    assert "parameters" in code[1].metadata.get("tags", []), (
        "2nd code cell must be tagged 'parameters'"
    )
    assert "profile = None" in code[1].source
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1


def test_validation_cell_follows_parameters(notebook):
    _, nb = notebook
    third = _code_cells(nb)[2].source
    assert third.startswith("# NBVAL_IGNORE_OUTPUT")
    assert "nb.resolve_profile(profile)" in third


def test_outputs_are_complete_and_error_free(notebook):
    _, nb = notebook
    for i, cell in enumerate(_code_cells(nb)):
        assert cell.execution_count is not None, f"code cell {i} was not executed"
        for out in cell.outputs:
            assert out.output_type != "error", f"code cell {i} stored an error: {out.get('ename')}"


def test_outputs_are_fresh(notebook):
    """Fails when code cells or utils/ changed after the stored outputs were produced."""
    path, nb = notebook
    problems = provenance.staleness(nb)
    assert not problems, (
        f"{path.name}: stale outputs ({'; '.join(problems)}). "
        f"Re-execute: .venv/bin/python tools/execute.py notebooks/{path.name}"
    )


def test_no_widget_state_without_widgets(notebook):
    """Widget state is only saved when a widget is shown (myst-nb then loads the widget manager)."""
    _, nb = notebook
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json")
    shown = any(
        "application/vnd.jupyter.widget-view+json" in out.get("data", {})
        for c in _code_cells(nb)
        for out in c.outputs
    )
    assert bool(state and state.get("state")) == shown
