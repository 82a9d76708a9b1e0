"""The project's executor: re-run notebooks in place with papermill and record what produced them.

Usage::

    python tools/execute.py                          # every notebook in notebooks/, book profile
    python tools/execute.py notebooks/01_background.ipynb --profile book
    python tools/execute.py --stale                  # only the notebooks whose outputs are stale

The profile reaches the notebook through the ``LLMBOOK_PROFILE`` environment variable, so papermill
injects no extra cell and the committed notebook stays as written. After a successful run the
notebook gets ``metadata["llmbook"]`` (profile, hashes of its code and of ``utils/``, versions,
duration; see :mod:`utils.provenance`), per-cell timing metadata is dropped (it would change on every
run), and the file is replaced. A failing notebook is left untouched; its partial output is written
next to it as ``<name>.failed.ipynb`` (git-ignored) for inspection.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
import papermill
from tqdm.auto import tqdm

from utils import progress, provenance
from utils.data import DATA_DIR_ENV, NO_FALLBACK_ENV
from utils.nb import PROFILE_ENV, PROFILES
from utils.plotting import SOURCE_ENV as PLOTLY_SOURCE_ENV

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SHARED_DATA = ROOT.parent / "shared" / "data"


def use_real_data() -> None:
    """Committed outputs come from the real datasets, never from the generated fallback corpus.

    Points the loaders at ``../shared/data`` when it exists and nothing else was chosen (as the
    Makefile does), and turns the fallback off: a loader that finds no dataset then fails the run
    instead of filling the page with numbers from the stand-in corpus.
    """
    if not os.environ.get(DATA_DIR_ENV) and SHARED_DATA.is_dir():
        os.environ[DATA_DIR_ENV] = str(SHARED_DATA)
    os.environ[NO_FALLBACK_ENV] = "1"


def _clean(nb: nbformat.NotebookNode) -> None:
    """Drop metadata that changes on every run (timestamps, durations) so diffs show real changes."""
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    drop_unshown_widget_state(nb)


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def drop_unshown_widget_state(nb) -> None:
    """Drop saved widget state when no output shows a widget: nbclient keeps the input's state
    when a run creates none (e.g. after progress bars were switched off), and myst-nb would load
    the widget manager (3.6 MB) for it on the page."""
    shown = any(
        WIDGET_VIEW in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    if not shown:
        nb.metadata.pop("widgets", None)


def execute(path: Path, profile: str, timeout: int) -> float:
    """Execute ``path`` in place under ``profile``; return the wall time in seconds."""
    failed = path.with_suffix(".failed.ipynb")
    env_before = os.environ.get(PROFILE_ENV)
    os.environ[PROFILE_ENV] = profile
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(path),
            str(failed),
            kernel_name="python3",
            cwd=str(path.parent),
            progress_bar=True,
            execution_timeout=timeout,
        )
    finally:
        if env_before is None:
            os.environ.pop(PROFILE_ENV, None)
        else:
            os.environ[PROFILE_ENV] = env_before
    duration = time.perf_counter() - start
    nb = nbformat.read(failed, as_version=4)
    _clean(nb)
    nb.metadata[provenance.METADATA_KEY] = provenance.record(nb, profile, duration)
    nbformat.write(nb, str(path))
    failed.unlink()
    return duration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "notebooks",
        nargs="*",
        type=Path,
        help="default: the chapters and notebooks/exercises/",
    )
    parser.add_argument("--profile", default="book", choices=PROFILES)
    parser.add_argument(
        "--stale", action="store_true", help="only notebooks with stale outputs"
    )
    parser.add_argument(
        "--timeout", type=int, default=1800, help="per-cell timeout in seconds"
    )
    args = parser.parse_args(argv)

    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9]*.ipynb")) + sorted(
        (NOTEBOOKS / "exercises").glob("*.ipynb")
    )
    paths = [p.resolve() for p in paths if not p.name.endswith(".failed.ipynb")]
    for p in paths:
        if not p.exists():
            parser.error(f"{p} does not exist")
    if args.stale:
        paths = [
            p for p in paths if provenance.staleness(nbformat.read(p, as_version=4))
        ]
    if args.profile != "book":
        print(
            f"note: committed notebooks must carry 'book' outputs; running '{args.profile}'"
        )

    # Committed outputs are for the built site, which serves plotly.js itself.
    os.environ[PLOTLY_SOURCE_ENV] = "site"
    # Stored outputs carry no progress bars (utils.progress): they freeze mid-way on the page.
    os.environ[progress.ENV] = "0"
    if args.profile == "book":
        use_real_data()
    failures = []
    for path in tqdm(paths, desc="notebooks", unit="nb"):
        tqdm.write(f"executing {path.name} under profile {args.profile}")
        try:
            seconds = execute(path, args.profile, args.timeout)
        except papermill.PapermillExecutionError as err:
            failures.append(path)
            tqdm.write(
                f"FAILED {path.name} at cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                f"  partial output kept in {path.with_suffix('.failed.ipynb').name}"
            )
            continue
        tqdm.write(f"done {path.name} in {seconds:.1f} s")
    if failures:
        print(
            f"{len(failures)} notebook(s) failed: {', '.join(p.name for p in failures)}"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
