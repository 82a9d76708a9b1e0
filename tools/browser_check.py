"""Look at the built site as a reader would: headless Chromium against a localhost server.

For each page it (1) dumps the DOM after scripts ran and counts what rendered — typeset math
(MathJax ``mjx-container``), drawn plotly figures (``.main-svg``), live widgets (``.widget-*``
elements created by the widget manager), mermaid diagrams (an ``svg`` inside ``.mermaid``); (2)
records every network request in a Chromium net-log and reports any that left localhost; (3) saves a
full-page screenshot. Exit status 1 if a request left localhost or a page failed to load.

Usage::

    python tools/browser_check.py [--site _build/html] [--out _build/browser] PAGE [PAGE ...]
    python tools/browser_check.py notebooks/01_background.html book/intro.html

Needs Debian's ``chromium`` (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import functools
import html
import http.server
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlparse

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
CHROMIUM_FLAGS = [
    "--headless",
    *ISOLATION_FLAGS,
    "--hide-scrollbars",
    "--virtual-time-budget=20000",  # let MathJax, plotly and the widget manager finish
]
RENDERED = {
    "math (mjx-container)": r"<mjx-container",
    "plotly figures (main-svg)": r'class="main-svg"',
    "widgets (widget-*)": r'class="[^"]*\bwidget-(?:vbox|hbox|slider|text|label|html|dropdown|box)',
    "mermaid diagrams (svg)": r'<pre class="mermaid"[^>]*data-processed="true"|class="mermaid"[^>]*>\s*<svg',
}


# Injected into every served page (never into the built files): after load, it records on <body>
# how many visible code blocks are wider than their box (clipped, needing a scroll bar), how many
# characters of code fit in a box, and how far down the page the first paragraph of prose after
# the title starts (the Colab link line is not prose).
MEASURE_JS = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const pres = [...document.querySelectorAll("div.cell_input pre, div.highlight pre")]
    .filter((p) => p.offsetParent !== null && p.clientWidth > 0);
  const clipped = pres.filter((p) => p.scrollWidth > p.clientWidth + 1);
  const inCode = clipped.filter((p) => p.closest("div.cell_input") !== null);
  let fit = -1;
  if (pres.length) {
    const probe = document.createElement("span");
    probe.textContent = "x".repeat(100);
    pres[0].appendChild(probe);
    const style = getComputedStyle(pres[0]);
    const inner = pres[0].clientWidth - parseFloat(style.paddingLeft)
      - parseFloat(style.paddingRight);
    fit = Math.floor(inner / (probe.getBoundingClientRect().width / 100));
    probe.remove();
  }
  const prose = [...document.querySelectorAll("article p, main p")]
    .find((p) => p.offsetParent !== null && p.textContent.trim().length > 40
      && !p.textContent.includes("Colab"));
  const b = document.body;
  const width = (sel) => {
    const el = document.querySelector(sel);
    return el ? Math.round(el.getBoundingClientRect().width) : -1;
  };
  b.setAttribute("data-llmbook-widths", ["article", ".bd-sidebar-primary",
    ".bd-sidebar-secondary", ".bd-article-container"].map(width).join(","));
  b.setAttribute("data-llmbook-code-blocks", pres.length);
  b.setAttribute("data-llmbook-clipped", inCode.length);
  b.setAttribute("data-llmbook-clipped-outputs", clipped.length - inCode.length);
  b.setAttribute("data-llmbook-clipped-first",
    clipped.map((p) => p.textContent.split("\\n").reduce((a, l) => l.length > a.length ? l : a, "")
      .slice(0, 100)).join(" || "));
  b.setAttribute("data-llmbook-chars-fit", fit);
  b.setAttribute("data-llmbook-prose-top",
    prose ? Math.round(prose.getBoundingClientRect().top + window.scrollY) : -1);
}, 0));
</script>"""
MEASURES = (
    "code-blocks",
    "clipped",
    "clipped-outputs",
    "clipped-first",
    "chars-fit",
    "prose-top",
    "widths",
)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send_head(self):
        """Serve .html pages with MEASURE_JS appended; everything else as is."""
        path = Path(self.translate_path(self.path.split("?")[0]))
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = path.read_bytes().replace(b"</body>", MEASURE_JS.encode() + b"</body>", 1)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


def _serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _chromium(args: list[str], user_dir: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("browser_check: chromium not found (apt-get install chromium)")
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={user_dir}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _page_requests(netlog: Path, origin: str) -> list[str]:
    """URLs the page itself requested (initiator = the page's origin, or the navigation to it).

    Chromium's own background calls (sign-in, updates) carry no origin and are left out.
    """
    text = netlog.read_text(errors="replace").rstrip()
    if not text.endswith("}"):  # Chromium may leave the log unterminated
        text = text.rstrip(",") + "]}"
    log = json.loads(text)
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params", {})
        if event["type"] == start_job and "url" in params:
            if params.get("initiator") == origin or params["url"].startswith(origin + "/"):
                urls.append(params["url"])
    return urls


def check_page(base: str, page: str, out: Path, height: int, width: int = 1280) -> dict:
    url = f"{base}/{page}"
    with tempfile.TemporaryDirectory() as user_dir:
        netlog = Path(user_dir) / "netlog.json"
        args = [f"--log-net-log={netlog}", f"--window-size={width},900", "--dump-dom", url]
        dom = _chromium(args, user_dir).stdout
        origin = base.rstrip("/")
        requests = _page_requests(netlog, origin) if netlog.exists() else []
    shot = out / (page.replace("/", "_").replace(".html", "") + ".png")
    with tempfile.TemporaryDirectory() as user_dir:
        _chromium([f"--screenshot={shot}", f"--window-size={width},{height}", url], user_dir)
    counts = {name: len(re.findall(rx, dom)) for name, rx in RENDERED.items()}
    body = re.search(r"<body[^>]*>", dom)
    layout = {}
    for key in MEASURES:
        m = re.search(rf'data-llmbook-{key}="([^"]*)"', body.group(0)) if body else None
        layout[key] = html.unescape(m.group(1)) if m else None
    return {
        "page": page,
        "dom_bytes": len(dom),
        "rendered": counts,
        "layout": layout,
        "requests": len(requests),
        "foreign_requests": sorted({u for u in requests if urlparse(u).hostname != "127.0.0.1"}),
        "screenshot": str(shot),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="+")
    parser.add_argument("--site", type=Path, default=Path("_build/html"))
    parser.add_argument("--out", type=Path, default=Path("_build/browser"))
    parser.add_argument("--height", type=int, default=4000, help="screenshot height in pixels")
    parser.add_argument("--width", type=int, default=1280, help="window width in pixels")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    server, port = _serve(args.site)
    failed = False
    try:
        for page in args.pages:
            base = f"http://127.0.0.1:{port}"
            result = check_page(base, page, args.out, args.height, args.width)
            print(json.dumps(result, indent=1))
            failed |= bool(result["foreign_requests"]) or result["dom_bytes"] < 1000
            failed |= result["layout"]["clipped"] not in ("0", None)
    finally:
        server.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
