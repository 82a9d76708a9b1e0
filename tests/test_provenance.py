"""Provenance hashes, and the staleness check built on them."""

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from utils import provenance


def _nb():
    return new_notebook(
        cells=[new_markdown_cell("# T"), new_code_cell("x = 1"), new_code_cell("print(x)")]
    )


def test_code_hash_ignores_markdown_outputs_and_injected_cells():
    nb = _nb()
    h = provenance.code_hash(nb)
    nb.cells[0].source = "# Another title"
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    injected = new_code_cell("profile = 'smoke'", metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(2, injected)
    assert provenance.code_hash(nb) == h
    nb.cells[1].source = "x = 2"
    assert provenance.code_hash(nb) != h


def test_utils_hash_changes_with_any_file(tmp_path):
    (tmp_path / "a.py").write_text("A = 1\n")
    h = provenance.utils_hash(tmp_path)
    (tmp_path / "b.py").write_text("B = 1\n")
    h2 = provenance.utils_hash(tmp_path)
    (tmp_path / "b.py").write_text("B = 2\n")
    assert len({h, h2, provenance.utils_hash(tmp_path)}) == 3


def test_staleness_reports_each_reason():
    nb = _nb()
    assert "no provenance record" in provenance.staleness(nb)[0]
    nb.metadata[provenance.METADATA_KEY] = provenance.record(nb, "book", 1.0)
    assert provenance.staleness(nb) == []
    nb.cells[1].source = "x = 3"
    assert provenance.staleness(nb) == ["code cells changed since the outputs were produced"]
    nb.metadata[provenance.METADATA_KEY] = provenance.record(nb, "smoke", 1.0)
    assert provenance.staleness(nb) == ["outputs come from profile 'smoke', not 'book'"]
    nb.metadata[provenance.METADATA_KEY]["utils_sha256"] = "0" * 64
    assert "utils/ changed since the outputs were produced" in provenance.staleness(nb)
