"""What produced a notebook's stored outputs: profile, hashes of its code and of ``utils/``, versions.

The executor (``tools/execute.py``) writes this record into ``metadata["llmbook"]`` of every notebook
it runs; ``tests/test_notebooks.py`` recomputes the hashes and fails when a notebook's code or the
library changed after its outputs were produced (the outputs are then stale).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import nbformat

METADATA_KEY = "llmbook"
UTILS_DIR = Path(__file__).resolve().parent
# Packages whose versions are recorded with the outputs.
RECORDED_PACKAGES = (
    "torch",
    "numpy",
    "transformers",
    "tokenizers",
    "plotly",
    "ipywidgets",
    "papermill",
    "nbclient",
)


def _is_injected(cell) -> bool:
    return "injected-parameters" in cell.get("metadata", {}).get("tags", [])


def code_hash(nb: nbformat.NotebookNode) -> str:
    """SHA-256 of the notebook's code cells (sources only; papermill's injected cell excluded)."""
    h = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code" and not _is_injected(cell):
            h.update(cell.source.replace("\r\n", "\n").encode())
            h.update(b"\x00")
    return h.hexdigest()


def utils_hash(utils_dir: Path = UTILS_DIR) -> str:
    """SHA-256 of every ``.py`` file under ``utils/`` (relative path and content, sorted)."""
    h = hashlib.sha256()
    for path in sorted(p for p in utils_dir.rglob("*.py") if "__pycache__" not in p.parts):
        h.update(path.relative_to(utils_dir).as_posix().encode())
        h.update(b"\x00")
        h.update(path.read_bytes().replace(b"\r\n", b"\n"))
        h.update(b"\x00")
    return h.hexdigest()


def record(nb: nbformat.NotebookNode, profile: str, duration_s: float) -> dict:
    """The provenance record for a notebook that was just executed under ``profile``."""
    from utils.nb import versions

    return {
        "profile": profile,
        "code_sha256": code_hash(nb),
        "utils_sha256": utils_hash(),
        "versions": versions(RECORDED_PACKAGES),
        "duration_s": round(duration_s, 1),
        "executed_by": "tools/execute.py",
    }


def staleness(nb: nbformat.NotebookNode) -> list[str]:
    """Reasons why ``nb``'s stored outputs are stale or unaccounted for (empty list: fresh)."""
    rec = nb.metadata.get(METADATA_KEY)
    if not rec:
        return ["no provenance record: the notebook was not executed with tools/execute.py"]
    problems = []
    if rec.get("profile") != "book":
        problems.append(f"outputs come from profile {rec.get('profile')!r}, not 'book'")
    if rec.get("code_sha256") != code_hash(nb):
        problems.append("code cells changed since the outputs were produced")
    if rec.get("utils_sha256") != utils_hash():
        problems.append("utils/ changed since the outputs were produced")
    return problems
