"""tools/site_check.py: what it counts as a problem, on results and on a small site in Chromium."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import site_check  # noqa: E402


def test_a_page_fails_for_each_kind_of_problem():
    ok = site_check.PageResult(
        "a.html", heatmaps=[{"id": "f", "trace": 0, "data": [3, 3], "drawn": [3, 3]}]
    )
    assert ok.failures() == []
    bad = site_check.PageResult(
        "b.html",
        console=["uncaught: boom"],
        failed=["404 http://127.0.0.1/x.woff2"],
        overflowing=["pre: long line (800 px in 720 px)"],
        heatmaps=[{"id": "fig-1", "trace": 0, "data": [16, 16], "drawn": [9, 9]}],
    )
    text = "\n".join(bad.failures())
    assert "console: uncaught: boom" in text
    assert "failed request: 404" in text
    assert "overflow: pre: long line" in text
    assert "heatmap fig-1 trace 0: data 16x16, drawn 9x9" in text
    table = site_check.format_table([ok, bad]).splitlines()
    assert table[2].split() == ["a.html", "0", "0", "0", "1/1", "0.0", "ok"]
    assert table[3].split() == ["b.html", "1", "1", "1", "0/1", "0.0", "FAIL"]


def test_site_pages_skip_assets_and_the_index(tmp_path):
    for rel in [
        "index.html",
        "genindex.html",
        "book/intro.html",
        "_static/x.html",
        "_sources/y.html",
        "notebooks/01.html",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("<html></html>")
    assert site_check.site_pages(tmp_path) == [
        "book/intro.html",
        "index.html",
        "notebooks/01.html",
    ]


PAGE = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<article class="bd-article" style="width: 600px">
<p>Some prose.</p>
{extra}
</article></body></html>"""


@pytest.mark.slow
def test_it_finds_an_overflow_a_console_error_and_a_missing_file(tmp_path):
    if not Path(site_check.CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    pytest.importorskip("playwright")
    site = tmp_path / "html"
    site.mkdir()
    wide = '<div style="overflow-x: auto"><div style="width: 900px">a wide equation</div></div>'
    broken = '<img src="missing.png"><script>console.error("bad thing")</script>'
    (site / "index.html").write_text(PAGE.format(extra="<p>clean</p>"))
    (site / "bad.html").write_text(PAGE.format(extra=wide + broken))
    out = tmp_path / "out"
    status = site_check.main(["--site", str(site), "--out", str(out), "--settle", "1"])
    assert status == 1
    report = json.loads((out / "site_check.json").read_text())
    pages = {p["page"]: p for p in report["pages"]}
    assert pages["index.html"]["failures"] == []
    bad = pages["bad.html"]
    assert any("a wide equation (900 px in 600 px)" in o for o in bad["overflowing"])
    assert any("bad thing" in c for c in bad["console"])
    assert any(
        f.startswith("404 ") and f.endswith("missing.png") for f in bad["failed"]
    )
    assert site_check.main(["--site", str(site), "--out", str(out), "index.html"]) == 0
