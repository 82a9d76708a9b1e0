"""The pure parts of tools/live_check.py: which requests count as external, how a chapter is
judged, the table and the exit status, and that its widget table matches the notebooks."""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import live_check  # noqa: E402


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8888/lab/tree/notebooks/01_background.ipynb?token=x",
        "ws://127.0.0.1:8888/api/kernels/abc/channels",
        "http://localhost:8888/static/lab/main.js",
        "http://[::1]:8888/api/status",
        "data:image/png;base64,iVBORw0KGgo=",
        "blob:http://127.0.0.1:8888/5f1c",
        "about:blank",
    ],
)
def test_local_urls(url):
    assert live_check.is_local_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.plot.ly/plotly-7.1.0.min.js",
        "https://cdn.jsdelivr.net/npm/requirejs@2.3.6/require.min.js",
        "http://127.0.0.1.nip.io/x.js",  # looks local, is not
        "https://localhost.example.org/",
        "wss://example.org/socket",
        "http://10.0.0.1:8888/",
    ],
)
def test_external_urls(url):
    assert not live_check.is_local_url(url)


def test_a_clean_chapter_passes():
    result = live_check.ChapterResult(
        "01_background", stored_figures=3, figures=3, drawn=3
    )
    result.widgets_checked = 1
    assert result.ok and result.failures() == []


def test_every_kind_of_failure_is_named():
    result = live_check.ChapterResult(
        "03a_attention_math", stored_figures=6, figures=5, drawn=1
    )
    result.undrawn_ids = ["fig-a", "fig-b", "fig-c", "fig-d"]
    result.external = ["https://cdn.plot.ly/plotly-7.1.0.min.js"]
    result.console = ["Failed to load resource: net::ERR_BLOCKED_BY_CLIENT"]
    result.errors = ["cell 12: ValueError: bad"]
    result.not_executed = [13, 14]
    result.widgets_checked = 1
    result.widget_failures = [
        "cost calculator: output unchanged 60 s after fill 'parameters N'"
    ]
    text = "\n".join(result.failures())
    assert not result.ok
    assert "4 of 5 plotly figures not drawn (no svg.main-svg in fig-a, fig-b" in text
    assert "the live run shows 5 plotly figures, the stored notebook 6" in text
    assert "1 requests left localhost (to cdn.plot.ly)" in text
    assert "console error: Failed to load resource" in text
    assert "error output: cell 12: ValueError: bad" in text
    assert "2 code cells not executed (cells 13, 14)" in text
    assert "widget: cost calculator: output unchanged" in text
    result.views, result.views_drawn = 2, 1
    assert "1 of 2 bertviz views not drawn" in "\n".join(result.failures())


def test_the_table_and_the_exit_status():
    good = live_check.ChapterResult("01_background", figures=3, drawn=3, seconds=20.4)
    good.widgets_checked = 1
    bad = live_check.ChapterResult("03a_attention_math", figures=6, drawn=0, seconds=46)
    bad.undrawn_ids = ["fig-1"]
    text, status = live_check.report([good, bad])
    assert status == 1
    lines = text.splitlines()
    assert lines[0].split() == [
        "chapter",
        "figures",
        "drawn/found",
        "bertviz",
        "drawn/found",
        "widgets",
        "ok/checked",
        "errors",
        "external",
        "console",
        "seconds",
        "result",
    ]
    assert lines[2].split() == [
        "01_background",
        "3/3",
        "0/0",
        "1/1",
        "0",
        "0",
        "0",
        "20",
        "ok",
    ]
    assert lines[3].split() == [
        "03a_attention_math",
        "0/6",
        "0/0",
        "0/0",
        "0",
        "0",
        "0",
        "46",
        "FAIL",
    ]
    assert "6 of 6 plotly figures not drawn" in text
    assert "live check FAILED: 1 of 2 chapters" in text
    assert live_check.report([good])[1] == 0


def test_chapters_are_chosen_by_prefix_in_file_order():
    assert live_check.select_chapters(["07", "01_background.ipynb"]) == [
        "01_background",
        "07_faq",
    ]
    assert live_check.select_chapters(["05"])[:2] == [
        "05a_imdb_classifier",
        "05b_wikitext_language_models",
    ]
    assert live_check.select_chapters([]) == live_check.DEFAULT_CHAPTERS
    assert live_check.select_chapters(["all"]) == live_check.ALL_CHAPTERS
    with pytest.raises(SystemExit, match="no chapter matches 'nope'"):
        live_check.select_chapters(["nope"])


def test_the_default_covers_every_chapter_with_figures_or_widgets():
    for name in live_check.ALL_CHAPTERS:
        notebook = ROOT / "notebooks" / f"{name}.ipynb"
        has_figures = live_check.stored_figure_count(notebook) > 0
        if has_figures or notebook.stem in live_check.WIDGET_CHECKS:
            assert notebook.stem in live_check.DEFAULT_CHAPTERS, notebook.name


def test_stored_figures_are_counted(tmp_path):
    div = '<div id="fig-1" class="llmbook-plotly"></div>'
    cells = [
        {"cell_type": "code", "outputs": [{"data": {"text/html": [div, div]}}]},
        {"cell_type": "code", "outputs": [{"text": "no figure"}]},
        {"cell_type": "markdown", "source": "text"},
    ]
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps({"cells": cells}))
    assert live_check.stored_figure_count(path) == 2


def _widget_sources():
    """The notebooks' code and utils/: where every widget's description label is written."""
    texts = [p.read_text() for p in (ROOT / "utils").glob("*.py")]
    for notebook in (ROOT / "notebooks").glob("[0-9]*.ipynb"):
        nb = json.loads(notebook.read_text())
        texts += ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    return "\n".join(texts)


def test_widget_checks_name_real_chapters_and_labels():
    sources = _widget_sources()
    for chapter, checks in live_check.WIDGET_CHECKS.items():
        assert chapter in live_check.ALL_CHAPTERS
        for check in checks:
            labels = {check.anchor} | {step.target for step in check.steps}
            for label in labels:
                assert re.search(rf"description=\"{re.escape(label)}\"", sources), (
                    chapter,
                    label,
                )
            assert {step.action for step in check.steps} <= {"fill", "slider", "click"}
            assert any(step.changes for step in check.steps)


def test_missing_chromium_fails_with_the_install_command(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(live_check, "CHROMIUM", tmp_path / "no-chromium")
    assert live_check.main(["01", "--out", str(tmp_path / "out")]) == 1
    assert "apt-get install chromium" in capsys.readouterr().err


def test_only_listed_console_errors_are_harmless(monkeypatch):
    text = (
        "Failed to load resource: the server responded with a status of 404 (/api/foo)"
    )
    assert not live_check.harmless_console_error(text)
    monkeypatch.setattr(
        live_check, "HARMLESS_CONSOLE_ERRORS", [(r"status of 404 \(/api/foo\)", "x")]
    )
    assert live_check.harmless_console_error(text)
    assert not live_check.harmless_console_error("Uncaught TypeError: x is undefined")
