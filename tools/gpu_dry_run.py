"""The ``gpu`` profile checked on a CPU: every chapter's configuration and data checks, no training.

Usage::

    python tools/gpu_dry_run.py                       # every notebook in notebooks/
    python tools/gpu_dry_run.py notebooks/04b_*.ipynb

Each notebook runs with papermill under ``-p profile gpu`` and ``LLMBOOK_DRY_RUN=1``, on the CPU
(no CUDA is needed: ``nb.resolve_profile`` only warns). A chapter calls ``nb.dry_run_stop(plan)``
right after its configuration and data-dependent checks (dataset sizes, batches available,
characters per run) and before its first expensive step; in a dry run that prints the chapter's
estimate (:mod:`utils.gpu_estimate`), publishes it, and raises ``DryRunStop``.

A chapter **passes** when it stops with ``DryRunStop`` and its estimate fits a T4
(:data:`utils.gpu_estimate.T4`: peak memory within its usable memory, time within
``--t4-minutes``). The time counts the part before the stop as measured here (times the GPU
machine's ``host_factor``) and the rest as the chapter's plan estimates it. It **fails** on any other exception before the stop (a ``ParameterError``
from a check, a missing package or model), when it runs to its end without reaching the stop,
or when its estimate is over the limits. At the end a table gives each chapter's result and its
estimated peak memory and time on a T4 and an H100; it is also written as JSON
(``_build/gpu_dry_run.json``). The exit status is the number of failed chapters (0: all passed).
Notebooks are not modified; their executed copies go to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import papermill

from utils import gpu_estimate, nb

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DEFAULT_JSON = ROOT / "_build" / "gpu_dry_run.json"


def _estimate_in(executed: nbformat.NotebookNode) -> dict | None:
    """The estimate ``nb.dry_run_stop`` published, if any."""
    for cell in executed.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if nb.DRY_RUN_MIME in data:
                return data[nb.DRY_RUN_MIME]
    return None


def _stop_cell(executed: nbformat.NotebookNode) -> int | None:
    """Index (in the original notebook) of the cell that raised, if any."""
    # papermill adds a parameters cell and, on an error, markdown cells that point at it.
    added = {"injected-parameters", "papermill-error-cell-tag"}
    original = [
        c for c in executed.cells if not added & set(c.metadata.get("tags", []))
    ]
    for index, cell in enumerate(original):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return index
    return None


def add_measured_part(estimate: dict, seconds: float) -> None:
    """Add the work before the dry-run point (data loading, tokenizing, the small checks),
    measured here, to each estimate: ``seconds`` x the GPU machine's ``host_factor``."""
    gpus = {g.name: g for g in gpu_estimate.TARGETS}
    for e in estimate.get("estimates", []):
        factor = gpus[e["gpu"]].host_factor if e["gpu"] in gpus else 1.0
        part = {
            "name": "before the dry-run point (measured)",
            "peak_bytes": 0.0,
            "seconds": seconds * factor,
        }
        e["phases"].insert(0, part)
        e["seconds"] += part["seconds"]


def check_limits(estimate: dict | None, t4_minutes: float) -> list[str]:
    """Why an estimate is over the limits (empty: within them)."""
    if not estimate or not estimate.get("estimates"):
        return ["no estimate: nb.dry_run_stop() was called without a plan"]
    problems = []
    for e in estimate["estimates"]:
        if e["gpu"] != gpu_estimate.T4.name:
            continue
        if not e["fits"]:
            problems.append(
                f"{e['peak_bytes'] / 2**30:.1f} GiB estimated > "
                f"{e['usable_bytes'] / 2**30:.1f} GiB usable on {e['gpu']}"
            )
        if e["seconds"] > 60 * t4_minutes:
            problems.append(
                f"{e['seconds'] / 60:.1f} min estimated on {e['gpu']} > {t4_minutes:g} min"
            )
    return problems


def dry_run(path: Path, workdir: Path, timeout: int, t4_minutes: float) -> dict:
    """Run one notebook up to its dry-run point; return its record for the report."""
    out = workdir / path.name
    env_before = {k: os.environ.get(k) for k in (nb.DRY_RUN_ENV, nb.PROFILE_ENV)}
    os.environ[nb.DRY_RUN_ENV] = "1"
    os.environ.pop(nb.PROFILE_ENV, None)  # the parameter decides
    start = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(
            str(path),
            str(out),
            parameters={"profile": "gpu"},
            kernel_name="python3",
            cwd=str(path.parent),
            progress_bar=False,
            execution_timeout=timeout,
        )
        error = "ran to its end without reaching nb.dry_run_stop()"
    except papermill.PapermillExecutionError as err:
        if err.ename != nb.DryRunStop.__name__:
            error = f"{err.ename}: {err.evalue}"
    except Exception as err:  # the kernel died, a timeout, ...
        error = f"{type(err).__name__}: {err}"
    finally:
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    seconds = time.perf_counter() - start
    executed = nbformat.read(out, as_version=4) if out.exists() else None
    estimate = _estimate_in(executed) if executed is not None else None
    if estimate:
        add_measured_part(estimate, seconds)
    problems = [] if error else check_limits(estimate, t4_minutes)
    return {
        "notebook": path.name,
        "ok": error is None and not problems,
        "error": error,
        "over_limits": problems,
        "stopped_at_cell": _stop_cell(executed) if executed is not None else None,
        "dry_run_seconds": round(seconds, 1),
        "estimate": estimate,
    }


def table(records: list[dict]) -> str:
    """The summary: one line per notebook."""
    gpus = [g.name for g in gpu_estimate.TARGETS]
    short = [name.split(" ")[0] for name in gpus]
    head = f"{'notebook':<46}{'dry run':>8}{'s':>5}"
    head += "".join(f"{s + ' GiB':>10}{s + ' min':>10}" for s in short)
    lines = [head]
    for r in records:
        by_gpu = {e["gpu"]: e for e in (r["estimate"] or {}).get("estimates", [])}
        cells = ""
        for name in gpus:
            e = by_gpu.get(name)
            cells += (
                f"{e['peak_bytes'] / 2**30:>10.2f}{e['seconds'] / 60:>10.1f}"
                if e
                else f"{'-':>10}{'-':>10}"
            )
        mark = "ok" if r["ok"] else "FAIL"
        lines.append(
            f"{r['notebook'][:45]:<46}{mark:>8}{r['dry_run_seconds']:>5.0f}{cells}"
        )
    totals = ""
    for name in gpus:
        minutes = sum(
            e["seconds"] / 60
            for r in records
            for e in (r["estimate"] or {}).get("estimates", [])
            if e["gpu"] == name
        )
        totals += f"{'':>10}{minutes:>10.1f}"
    lines.append(f"{'all chapters (minutes)':<46}{'':>8}{'':>5}{totals}")
    for r in records:
        for problem in ([r["error"]] if r["error"] else []) + r["over_limits"]:
            lines.append(f"FAIL {r['notebook']}: {problem}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb"
    )
    parser.add_argument(
        "--timeout", type=int, default=600, help="per-cell timeout, seconds"
    )
    parser.add_argument(
        "--t4-minutes", type=float, default=20.0, help="time limit on a T4"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="report file")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    records = []
    with tempfile.TemporaryDirectory(prefix="llmbook-dry-run-") as tmp:
        for path in paths:
            record = dry_run(path.resolve(), Path(tmp), args.timeout, args.t4_minutes)
            records.append(record)
            status = "ok" if record["ok"] else "FAIL"
            print(
                f"{status:>4} {path.name} ({record['dry_run_seconds']:.0f} s)",
                flush=True,
            )
    print()
    print(table(records))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "profile": "gpu",
        "limits": {
            "t4_minutes": args.t4_minutes,
            "t4_usable_bytes": gpu_estimate.T4.usable_bytes,
        },
        "gpus": [g.__dict__ for g in gpu_estimate.TARGETS],
        "chapters": records,
    }
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwritten: {args.json}")
    failed = sum(not r["ok"] for r in records)
    return min(failed, 125)


if __name__ == "__main__":
    sys.exit(main())
