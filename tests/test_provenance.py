"""Provenance hashes, the per-module dependency scan, and the staleness check built on them."""

import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from utils import provenance

ROOT = Path(__file__).resolve().parents[1]


def _nb(*sources):
    cells = [new_markdown_cell("# T")] + [
        new_code_cell(s) for s in sources or ("x = 1",)
    ]
    return new_notebook(cells=cells)


@pytest.fixture
def fake_utils(tmp_path):
    """A package with a chain a -> b (relative import) -> c (lazy import), and an unrelated d."""
    pkg = tmp_path / "utils"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""fake"""\n')
    (pkg / "a.py").write_text("from . import b\n\nA = b.B\n")
    (pkg / "b.py").write_text(
        "def f():\n    from utils.c import C\n    return C\n\nB = 1\n"
    )
    (pkg / "c.py").write_text("C = 2\n")
    (pkg / "d.py").write_text("D = 3\n")
    return pkg


def test_code_hash_ignores_markdown_outputs_and_injected_cells():
    nb = _nb("x = 1", "print(x)")
    h = provenance.code_hash(nb)
    nb.cells[0].source = "# Another title"
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    injected = new_code_cell(
        "profile = 'smoke'", metadata={"tags": ["injected-parameters"]}
    )
    nb.cells.insert(2, injected)
    assert provenance.code_hash(nb) == h
    nb.cells[1].source = "x = 2"
    assert provenance.code_hash(nb) != h


def test_dependencies_are_followed_transitively(fake_utils):
    deps = provenance.utils_dependencies(
        ["%time x = 1\nfrom utils import a"], fake_utils
    )
    # utils.a directly; b through a (relative import); c through b (import inside a function).
    assert deps == {
        "utils.a": None,
        "utils": None,
        "utils.b": "utils.a",
        "utils.c": "utils.b",
    }
    assert provenance.utils_dependencies(["import os\nimport utilsx"], fake_utils) == {}
    deps = provenance.utils_dependencies(
        ["import utils.d\nfrom utils.c import C"], fake_utils
    )
    assert set(deps) == {"utils", "utils.c", "utils.d"}


def test_editing_an_unused_module_keeps_the_notebook_fresh(fake_utils):
    nb = _nb("from utils.a import A\nprint(A)")
    nb.metadata[provenance.METADATA_KEY] = provenance.record(
        nb, "book", 1.0, fake_utils
    )
    assert set(nb.metadata[provenance.METADATA_KEY]["utils_modules"]) == {
        "utils/__init__.py",
        "utils/a.py",
        "utils/b.py",
        "utils/c.py",
    }
    with (fake_utils / "d.py").open("a") as f:
        f.write("# an edit in a module the notebook does not use\n")
    assert provenance.staleness(nb, fake_utils) == []


@pytest.mark.parametrize(
    "edited, how",
    [
        ("a", "imported by the notebook"),
        ("b", "imported through utils.a"),
        ("c", "imported through utils.b"),
    ],
)
def test_editing_a_used_module_names_it(fake_utils, edited, how):
    nb = _nb("from utils.a import A\nprint(A)")
    nb.metadata[provenance.METADATA_KEY] = provenance.record(
        nb, "book", 1.0, fake_utils
    )
    with (fake_utils / f"{edited}.py").open("a") as f:
        f.write("EDITED = True\n")
    assert provenance.staleness(nb, fake_utils) == [
        f"utils.{edited} (utils/{edited}.py, {how}) changed since the outputs were produced"
    ]


def test_staleness_reports_each_reason(fake_utils):
    nb = _nb("from utils import a")
    assert "no provenance record" in provenance.staleness(nb, fake_utils)[0]
    nb.metadata[provenance.METADATA_KEY] = provenance.record(
        nb, "book", 1.0, fake_utils
    )
    assert provenance.staleness(nb, fake_utils) == []
    nb.cells[1].source = "from utils import a\nx = 3"
    assert provenance.staleness(nb, fake_utils) == [
        "code cells changed since the outputs were produced"
    ]
    nb.metadata[provenance.METADATA_KEY] = provenance.record(
        nb, "smoke", 1.0, fake_utils
    )
    assert provenance.staleness(nb, fake_utils) == [
        "outputs come from profile 'smoke', not 'book'"
    ]
    del nb.metadata[provenance.METADATA_KEY]["utils_modules"]
    assert "no code digests" in provenance.staleness(nb, fake_utils)[-1]


def test_comments_docstrings_and_formatting_do_not_stale(fake_utils):
    nb = _nb("from utils import a")
    nb.metadata[provenance.METADATA_KEY] = provenance.record(
        nb, "book", 1.0, fake_utils
    )
    (fake_utils / "c.py").write_text(
        '"""A docstring."""\n\n# why C is 2\nC = (\n    2\n)\n'
    )
    assert provenance.staleness(nb, fake_utils) == []
    (fake_utils / "c.py").write_text("C = 3\n")
    assert provenance.staleness(nb, fake_utils) == [
        "utils.c (utils/c.py, imported through utils.b) changed since the outputs were "
        "produced"
    ]


def test_a_recorded_result_the_notebook_reads_is_tracked(tmp_path, fake_utils):
    results = tmp_path / "results"
    results.mkdir()
    (results / "bench_cpu.json").write_text('{"x": 1}')
    (results / "other_cpu.json").write_text('{"y": 1}')
    nb = _nb('from pathlib import Path\nr = Path("results") / "bench_cpu.json"')
    assert list(provenance.result_inputs(nb, results)) == ["results/bench_cpu.json"]
    before = provenance.result_inputs(nb, results)
    (results / "other_cpu.json").write_text('{"y": 2}')
    assert provenance.result_inputs(nb, results) == before
    (results / "bench_cpu.json").write_text('{"x": 2}')
    assert provenance.result_inputs(nb, results) != before


def test_chapter_one_depends_on_ngram_but_not_on_scaling(tmp_path):
    """On a copy of the real library: a code edit to utils/scaling.py leaves chapter 1 fresh (it
    does not use it); one to utils/ngram.py does not; a comment in ngram.py does not either."""
    path = ROOT / "notebooks" / "01_background.ipynb"
    nb = nbformat.read(path, as_version=4)
    utils_copy = tmp_path / "utils"
    shutil.copytree(
        provenance.UTILS_DIR, utils_copy, ignore=shutil.ignore_patterns("__pycache__")
    )
    nb.metadata[provenance.METADATA_KEY] = provenance.record(
        nb, "book", 1.0, utils_copy
    )
    with (utils_copy / "scaling.py").open("a") as f:
        f.write("EDITED = True\n")
    assert provenance.staleness(nb, utils_copy) == []
    with (utils_copy / "ngram.py").open("a") as f:
        f.write("# a comment\n")
    assert provenance.staleness(nb, utils_copy) == []
    with (utils_copy / "ngram.py").open("a") as f:
        f.write("EDITED = True\n")
    (problem,) = provenance.staleness(nb, utils_copy)
    assert problem.startswith(
        "utils.ngram (utils/ngram.py, imported by the notebook) changed"
    )
