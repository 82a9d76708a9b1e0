"""Read every page of the built site in headless Chromium and check what a reader meets.

Serves ``_build/html`` on 127.0.0.1, opens each page with Playwright (Debian's chromium) at a
desktop width, waits for MathJax, plotly, the widget manager and mermaid to finish, and records:

- **console errors**: ``console.error`` messages and uncaught exceptions;
- **failed requests**: a response with status >= 400, or a request that failed (e.g. a missing
  font); requests to another host are blocked and counted as failed;
- **overflow**: elements of the page's text column whose content is wider than their box (a
  display equation, a table or a code block that a reader must scroll sideways), or that stick out
  of the column; bertviz's model view, a grid of thumbnails that scrolls sideways by design, is
  the one exception;
- **heatmaps**: for every plotly heatmap, the cells drawn (distinct x and y positions after plotly
  mapped the categories) against the cells of its data; repeated category labels (two "the"
  tokens) would merge rows and columns;
- **icons**: a Font Awesome ``<i>`` that was not turned into an svg (an icon missing from the
  site's subset, ``tools/vendor_js.py``);
- **JavaScript**: bytes of script files the page loaded plus its inline scripts (reported, not
  judged).

It prints one row per page and writes ``site_check.json`` (and a screenshot per page) to ``--out``.
Exit status 1 when any page has a console error, a failed request, an overflowing element or a
heatmap with merged cells or an icon not drawn.

Usage::

    python tools/site_check.py                          # every page of _build/html
    python tools/site_check.py notebooks/03a_attention_math.html book/intro.html
    python tools/site_check.py --width 420 --no-fail    # how it reads on a phone
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# Chromium on a closed network: no sandbox as root, no GPU, and no background connections (they
# would be refused, many at a time). tools/live_check.py starts Chromium with the same flags.
ISOLATION_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

SKIPPED_PARTS = {
    "_static",
    "_sources",
    "_images",
    "_sphinx_design_static",
    "_panels_static",
}
SKIPPED_PAGES = {"genindex.html"}

# Waits until what the page draws has been drawn: MathJax typeset, every plotly div has its svg,
# every mermaid block its svg (or ~15 s passed; the rows then show what is missing).
JS_SETTLED = """() => {
  const mj = window.MathJax;
  const mathDone = !mj || !mj.startup || !mj.startup.promise || window.__llmbookMathDone;
  if (mj && mj.startup && mj.startup.promise && !window.__llmbookMathWait) {
    window.__llmbookMathWait = true;
    mj.startup.promise.then(() => { window.__llmbookMathDone = true; });
  }
  const plots = [...document.querySelectorAll("div.llmbook-plotly")];
  const mermaid = [...document.querySelectorAll("pre.mermaid, div.mermaid")];
  return mathDone && plots.every((d) => d.querySelector("svg.main-svg"))
    && mermaid.every((d) => d.querySelector("svg"));
}"""

JS_MEASURE = """() => {
  const column = document.querySelector("article.bd-article") || document.querySelector("main")
    || document.body;
  const right = column.getBoundingClientRect().right;
  const describe = (el) => {
    const cls = (el.className && el.className.baseVal === undefined ? el.className : "")
      .toString().split(/\\s+/).filter(Boolean).slice(0, 2).join(".");
    const text = (el.textContent || "").replace(/\\s+/g, " ").trim().slice(0, 70);
    return `${el.tagName.toLowerCase()}${cls ? "." + cls : ""}: ${text}`;
  };
  const overflowing = [];
  const seen = new Set();
  for (const el of column.querySelectorAll("*")) {
    if (el.offsetParent === null && el.tagName !== "MJX-CONTAINER") continue;
    if (el.closest("details:not([open])") || el.closest(".toggle-hidden")) continue;
    if (el.closest("mjx-assistive-mml")) continue;  // MathJax's hidden copy for screen readers
    // bertviz's model view (a thumbnail per layer and head) scrolls sideways by design
    if (el.closest('[id^="bertviz-"]') || el.querySelector('[id^="bertviz-"]')) continue;
    const style = getComputedStyle(el);
    // inline boxes (inline math, code spans) wrap with the line; only blocks can be cut
    const block = !style.display.startsWith("inline") && style.display !== "contents";
    const scrolls = block && ["auto", "scroll", "hidden"].includes(style.overflowX);
    const box = el.getBoundingClientRect();
    if (box.width === 0) continue;
    const clipped = scrolls && el.scrollWidth > el.clientWidth + 2;
    const sticksOut = block && box.right > right + 2
      && !el.closest(".js-plotly-plot, .widget-box");
    if (!clipped && !sticksOut) continue;
    // report the outermost element of a nest once
    if ([...seen].some((s) => s.contains(el))) continue;
    seen.add(el);
    overflowing.push(`${describe(el)} (${Math.round(clipped ? el.scrollWidth : box.width)} px `
      + `in ${Math.round(clipped ? el.clientWidth : right - box.left)} px)`);
  }
  const heatmaps = [];
  for (const gd of document.querySelectorAll(".js-plotly-plot")) {
    (gd.data || []).forEach((trace, i) => {
      const full = gd._fullData && gd._fullData[i];
      if (trace.type !== "heatmap" || !full || !gd.calcdata || !gd.calcdata[i]) return;
      // the data's z (plotly.py may send it base64-encoded: _fullData holds it decoded) against
      // the z plotly drew after mapping x and y to axis positions
      const z = full.z || [], drawnZ = gd.calcdata[i][0].z || [];
      const rows = z.length, cols = rows ? z[0].length : 0;
      const drawnRows = drawnZ.length, drawnCols = drawnRows ? drawnZ[0].length : 0;
      heatmaps.push({id: gd.id || (gd.parentElement && gd.parentElement.id) || "",
        trace: i, data: [rows, cols], drawn: [drawnRows, drawnCols]});
    });
  }
  const scripts = performance.getEntriesByType("resource")
    .filter((e) => e.initiatorType === "script" || /\\.m?js(\\?|$)/.test(e.name));
  const inline = [...document.scripts].filter((s) => !s.src)
    .reduce((n, s) => n + s.textContent.length, 0);
  // Font Awesome replaces each <i class="fa-..."> by an svg; one left is an icon that the
  // site's subset (tools/vendor_js.py ICONS) does not carry
  const icons = [...document.querySelectorAll('i[class*="fa-"]')].map((e) => e.className);
  return {
    overflowing: overflowing,
    heatmaps: heatmaps,
    icons_missing: icons,
    js_files: scripts.reduce((n, e) => n + (e.decodedBodySize || e.transferSize || 0), 0),
    js_inline: inline,
    js_largest: scripts.map((e) => [e.name.split("/").pop(), e.decodedBodySize])
      .sort((a, b) => b[1] - a[1]).slice(0, 4),
  };
}"""


@dataclass
class PageResult:
    page: str
    console: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    overflowing: list[str] = field(default_factory=list)
    heatmaps: list[dict] = field(default_factory=list)
    js_bytes: int = 0
    js_largest: list = field(default_factory=list)
    icons_missing: list[str] = field(default_factory=list)
    problem: str = ""
    seconds: float = 0.0

    @property
    def merged_heatmaps(self) -> list[dict]:
        return [h for h in self.heatmaps if h["drawn"] != h["data"]]

    def failures(self) -> list[str]:
        out = [self.problem] if self.problem else []
        out += [f"console: {c}" for c in self.console]
        out += [f"failed request: {f}" for f in self.failed]
        out += [f"overflow: {o}" for o in self.overflowing]
        out += [
            f"heatmap {h['id']} trace {h['trace']}: data {h['data'][0]}x{h['data'][1]}, "
            f"drawn {h['drawn'][0]}x{h['drawn'][1]}"
            for h in self.merged_heatmaps
        ]
        out += [f"icon not drawn: {c}" for c in self.icons_missing]
        return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def site_pages(site: Path) -> list[str]:
    """Every content page of the site (plus search.html), as paths relative to ``site``."""
    pages = []
    for path in sorted(site.rglob("*.html")):
        rel = path.relative_to(site)
        if SKIPPED_PARTS & set(rel.parts) or rel.name in SKIPPED_PAGES:
            continue
        pages.append(rel.as_posix())
    return pages


def check_page(context, base: str, page: str, out: Path, settle_s: float) -> PageResult:
    result = PageResult(page)
    start = time.monotonic()
    tab = context.new_page()

    def on_console(message):
        if message.type == "error":
            result.console.append(
                f"{message.text[:240]} ({message.location.get('url', '')})"
            )

    def on_response(response):
        if response.status >= 400:
            result.failed.append(f"{response.status} {response.url}")

    def on_failed(request):
        if urlparse(request.url).hostname not in ("127.0.0.1", "localhost"):
            result.failed.append(f"blocked (another host) {request.url}")
        else:
            result.failed.append(f"{request.failure} {request.url}")

    tab.on("console", on_console)
    tab.on(
        "pageerror", lambda err: result.console.append(f"uncaught: {str(err)[:240]}")
    )
    tab.on("response", on_response)
    tab.on("requestfailed", on_failed)
    tab.route(
        lambda url: urlparse(url).hostname not in ("127.0.0.1", "localhost"),
        lambda route: route.abort("blockedbyclient"),
    )
    try:
        tab.goto(f"{base}/{page}", wait_until="load", timeout=60_000)
        try:
            tab.wait_for_function(JS_SETTLED, timeout=settle_s * 1000, polling=250)
        except Exception:
            pass  # what did not draw shows in the measures
        tab.wait_for_timeout(1000)  # widget manager and late console messages
        measured = tab.evaluate(JS_MEASURE)
        result.overflowing = measured["overflowing"]
        result.heatmaps = measured["heatmaps"]
        result.icons_missing = measured["icons_missing"]
        result.js_bytes = measured["js_files"] + measured["js_inline"]
        result.js_largest = measured["js_largest"]
        tab.screenshot(
            path=str(out / (page.replace("/", "_").replace(".html", ".png")))
        )
    except Exception as err:
        result.problem = f"{type(err).__name__}: {str(err).splitlines()[0]}"
    finally:
        tab.close()
        result.seconds = time.monotonic() - start
    return result


def format_table(results: list[PageResult]) -> str:
    header = ("page", "console", "failed", "overflow", "heatmaps ok", "JS MB", "result")
    rows = [header]
    for r in results:
        ok_maps = len(r.heatmaps) - len(r.merged_heatmaps)
        rows.append(
            (
                r.page,
                str(len(r.console)),
                str(len(r.failed)),
                str(len(r.overflowing)),
                f"{ok_maps}/{len(r.heatmaps)}",
                f"{r.js_bytes / 1e6:.1f}",
                "ok" if not r.failures() else "FAIL",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "pages", nargs="*", help="pages relative to the site (default: all)"
    )
    parser.add_argument("--site", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "site_check")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument(
        "--settle", type=float, default=15.0, help="seconds to wait for drawing"
    )
    parser.add_argument(
        "--no-fail", action="store_true", help="report only; exit status 0"
    )
    args = parser.parse_args(argv)
    if not (args.site / "index.html").exists():
        raise SystemExit(f"site_check: no built site in {args.site} (run make site)")
    if not Path(CHROMIUM).exists():
        raise SystemExit(
            "site_check: /usr/bin/chromium missing (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    pages = args.pages or site_pages(args.site)
    args.out.mkdir(parents=True, exist_ok=True)
    server, base = serve(args.site)
    results = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ISOLATION_FLAGS)
            context = browser.new_context(viewport={"width": args.width, "height": 900})
            for page in pages:
                results.append(check_page(context, base, page, args.out, args.settle))
            browser.close()
    finally:
        server.shutdown()
    report = {
        "width": args.width,
        "pages": [asdict(r) | {"failures": r.failures()} for r in results],
    }
    (args.out / "site_check.json").write_text(json.dumps(report, indent=1))
    print(format_table(results))
    bad = [r for r in results if r.failures()]
    for r in bad:
        print(f"\n{r.page}:")
        for failure in r.failures()[:12]:
            print(f"  - {failure}")
        if len(r.failures()) > 12:
            print(f"  ... and {len(r.failures()) - 12} more (site_check.json)")
    total_js = sum(r.js_bytes for r in results) / max(len(results), 1) / 1e6
    print(
        f"\nsite check: {len(bad)} of {len(results)} pages with problems; "
        f"JavaScript {total_js:.1f} MB per page on average; report in {args.out}"
    )
    return 1 if bad and not args.no_fail else 0


if __name__ == "__main__":
    sys.exit(main())
