"""The gpu profile's dry run: nb.dry_run_stop, the chapters' dry-run points, tools/gpu_dry_run.py."""

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest

from utils import gpu_estimate, nb

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    p for p in (ROOT / "notebooks").glob("[0-9]*.ipynb") if ".failed" not in p.name
)


def _tool():
    spec = importlib.util.spec_from_file_location(
        "gpu_dry_run", ROOT / "tools" / "gpu_dry_run.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plan():
    lm = gpu_estimate.Transformer(
        vocab=100, d_model=32, n_layers=2, n_heads=2, context=16, batch=4
    )
    return gpu_estimate.Plan("demo").train("train", lm, 10)


def test_dry_run_stop_does_nothing_outside_a_dry_run(monkeypatch, capsys):
    monkeypatch.delenv(nb.DRY_RUN_ENV, raising=False)
    assert not nb.dry_run()
    nb.dry_run_stop(_plan())
    monkeypatch.setenv(nb.DRY_RUN_ENV, "0")
    nb.dry_run_stop(_plan())
    assert capsys.readouterr().out == ""


def test_dry_run_stop_reports_and_stops(monkeypatch, capsys):
    monkeypatch.setenv(nb.DRY_RUN_ENV, "1")
    assert nb.dry_run()
    with pytest.raises(nb.DryRunStop, match="checks passed") as stop:
        nb.dry_run_stop(_plan())
    out = capsys.readouterr().out
    assert "gpu profile of demo" in out and "T4" in out and "H100" in out
    # IPython shows one line, not a traceback
    assert stop.value._render_traceback_() == [f"DryRunStop: {stop.value}"]


def test_every_chapter_has_one_dry_run_point_after_its_configure_cell():
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        stops = [i for i, c in enumerate(code) if "nb.dry_run_stop(" in c.source]
        assert len(stops) == 1, f"{path.name}: {len(stops)} nb.dry_run_stop() calls"
        assert stops[0] > 2, (
            f"{path.name}: the dry-run point comes before the configure cell"
        )
        last = code[stops[0]].source.strip().splitlines()[-1]
        assert re.fullmatch(r"nb\.dry_run_stop\(\w+\)", last), f"{path.name}: {last}"


def test_limits_and_table():
    tool = _tool()
    within = _plan().to_dict()
    assert tool.check_limits(within, 20.0) == []
    assert tool.check_limits(None, 20.0)  # no estimate is a failure
    slow = gpu_estimate.Plan("slow").host("cpu", 3600.0).to_dict()
    assert any("min estimated" in p for p in tool.check_limits(slow, 20.0))
    big_lm = gpu_estimate.Transformer(
        vocab=50_000, d_model=1024, n_layers=24, n_heads=16, context=1024, batch=64
    )
    big = gpu_estimate.Plan("big").train("t", big_lm, 1).to_dict()
    assert any("GiB estimated" in p for p in tool.check_limits(big, 20.0))
    tool.add_measured_part(within, 10.0)
    t4 = within["estimates"][0]
    assert t4["phases"][0]["seconds"] == 10.0 * gpu_estimate.T4.host_factor
    record = {
        "notebook": "x.ipynb",
        "ok": True,
        "error": None,
        "over_limits": [],
        "dry_run_seconds": 10.0,
        "estimate": within,
    }
    failed = dict(
        record, notebook="y.ipynb", ok=False, error="ParameterError: no", estimate=None
    )
    text = tool.table([record, failed])
    assert "x.ipynb" in text and "FAIL y.ipynb: ParameterError: no" in text


def _notebook(path: Path, body: str) -> Path:
    book = nbformat.v4.new_notebook()
    book.cells = [
        nbformat.v4.new_code_cell("profile = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(body),
        nbformat.v4.new_code_cell("raise RuntimeError('after the dry-run point')"),
    ]
    book.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(book, path)
    return path


@pytest.mark.slow
def test_tool_passes_a_stop_and_fails_an_error_or_no_stop(tmp_path):
    """Three tiny notebooks through papermill: one stops at its dry-run point (pass), one fails
    a check before it, one never calls nb.dry_run_stop (both fail)."""
    tool = _tool()
    header = (
        "from utils import gpu_estimate, nb\n"
        "assert profile == 'gpu'\n"
        "lm = gpu_estimate.Transformer(vocab=100, d_model=32, n_layers=2, n_heads=2, "
        "context=16, batch=4)\n"
        "plan = gpu_estimate.Plan('t').train('train', lm, 10)\n"
    )
    good = _notebook(tmp_path / "good.ipynb", header + "nb.dry_run_stop(plan)")
    bad = _notebook(
        tmp_path / "bad.ipynb",
        header + "nb.require(False, 'too few batches')\nnb.dry_run_stop(plan)",
    )
    never = _notebook(tmp_path / "never.ipynb", "x = 1")
    # runs to its end: no dry-run point, and no error after one either
    never.write_text(
        never.read_text().replace(
            "raise RuntimeError('after the dry-run point')", "y = 2"
        )
    )
    work = tmp_path / "out"
    work.mkdir()
    results = {
        p.stem: tool.dry_run(p, work, timeout=120, t4_minutes=20.0)
        for p in (good, bad, never)
    }
    assert results["good"]["ok"], results["good"]
    assert results["good"]["estimate"]["chapter"] == "t"
    assert results["good"]["stopped_at_cell"] == 1
    assert not results["bad"]["ok"] and "too few batches" in results["bad"]["error"]
    assert (
        not results["never"]["ok"] and "without reaching" in results["never"]["error"]
    )
    json.dumps(results)
