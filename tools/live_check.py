"""Run the chapters in a real JupyterLab, in headless Chromium, and check what a reader sees.

The static-site check (``tools/site_check.py``) looks at the built pages; this one looks at the
*live* notebooks. It starts Jupyter Server with JupyterLab on 127.0.0.1 (a free port, a token,
temporary Jupyter config/runtime/data folders so nothing of the user's setup leaks in), copies the
notebooks to a temporary folder (the committed ones are never touched), opens each chapter with
Playwright, clears its outputs, runs all cells under the ``smoke`` profile and then checks:

- every plotly figure was drawn: each ``div.llmbook-plotly`` holds an ``svg.main-svg``, and the live
  run shows at least as many figures as the stored notebook; every bertviz view (a
  ``div[id^=bertviz-]``) holds an ``svg``;
- no cell output is an error (an ``error`` output, a traceback printed to stderr, or an exception in
  a widget callback), and every code cell has an execution count;
- the page requested nothing from a host other than 127.0.0.1 / localhost (such requests are
  blocked and reported);
- no JavaScript error reached the console (``console.error`` or an uncaught exception), apart from
  messages listed, each with its reason, in ``HARMLESS_CONSOLE_ERRORS`` (JupyterLab 4.6 needs none);
- the interactive widgets answer: the checks in ``WIDGET_CHECKS`` type into the rendered text boxes,
  move sliders and click buttons on the real DOM elements and wait until the widget's output changes.

It prints one table row per chapter, saves a screenshot per chapter (``--out``, default
``_build/live/``) and exits with status 1 if anything failed.

Usage::

    python tools/live_check.py                 # every chapter with a figure or a widget
    python tools/live_check.py 01 05e 07       # chapters by file-name prefix
    python tools/live_check.py all             # all 16

Needs Debian's ``chromium`` (``apt-get install chromium``) and the ``jupyterlab`` and ``playwright``
pins of requirements.txt (Playwright drives the system Chromium; its own browser download is not
used).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from site_check import (
    ISOLATION_FLAGS,  # tools/ is on sys.path: run as a script or by the tests
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ISOLATION_FLAGS  # Playwright adds the headless flag itself
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# URLs that never reach a network: inline data, in-page blobs, the blank page.
LOCAL_SCHEMES = frozenset({"data", "blob", "about", "javascript"})

# Console errors JupyterLab itself logs on a healthy page: (regular expression, why it is harmless).
# Keep every pattern as narrow as the message allows: anything else is a failure. Empty: JupyterLab
# 4.6.6 with ipywidgets 8.1.9 logged no error over all 16 chapters.
HARMLESS_CONSOLE_ERRORS: list[tuple[str, str]] = []

# Every chapter, in file order: later chapters read the exports of earlier ones (6.1 loads the
# classifiers 5.1 and 5.4 export), so a full run in this order is what a reader gets.
# Not the executor's partial output of a run in progress (NN_name.failed.ipynb).
ALL_CHAPTERS = sorted(
    p.stem
    for p in NOTEBOOKS.glob("[0-9]*.ipynb")
    if not p.name.endswith(".failed.ipynb")
)
# The default: every chapter with a plotly figure or a widget, which leaves out only 6.3
# (prompting SmolLM2: no figure, no widget, 95 s of the ~11 minutes all 16 took on 2 loaded CPU
# cores under the smoke profile). `live_check.py --all` or `live_check.py 06c` runs it too.
DEFAULT_CHAPTERS = [c for c in ALL_CHAPTERS if c != "06c_prompting_an_instruct_model"]


# --------------------------------------------------------------------------------------------------
# What the widgets must do
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One action on a rendered widget.

    ``action`` is ``"fill"`` (type ``value`` into the text box, number box or text area whose
    description label is ``target``, then Enter/leave the box), ``"slider"`` (focus the handle of
    the slider labelled ``target`` and press the key ``value``) or ``"click"`` (the button whose
    text is ``target``). With ``changes=True`` the widget's output must change after this step.
    """

    action: str
    target: str
    value: str = ""
    changes: bool = True


@dataclass(frozen=True)
class WidgetCheck:
    """A widget, found as the ``index``-th cell output that has a label (or button) ``anchor``;
    ``result`` is the CSS selector, inside that output, of the part that must change."""

    name: str
    anchor: str
    result: str
    steps: tuple[Step, ...]
    index: int = 0
    expect_figure: bool = False  # the changed output must hold a drawn plotly figure


_EXPLORER_TEXT = Step("fill", "Text", "Dogs bark at the postman every single morning.")
_EXPLORER = dict(name="attention explorer", anchor="Layer", result=".widget-output")
_COST = WidgetCheck(
    "cost calculator",
    anchor="parameters N",
    result=".widget-html-content",
    steps=(Step("fill", "parameters N", "13000000000"),),
)
WIDGET_CHECKS: dict[str, tuple[WidgetCheck, ...]] = {
    "01_background": (_COST,),
    "03b_attention_cost_and_views": (
        WidgetCheck(**_EXPLORER, steps=(_EXPLORER_TEXT,), expect_figure=True),
        WidgetCheck(
            **_EXPLORER,
            index=1,
            steps=(_EXPLORER_TEXT, Step("slider", "Head", "ArrowRight")),
            expect_figure=True,
        ),
    ),
    "05a_imdb_classifier": (
        WidgetCheck(**_EXPLORER, steps=(_EXPLORER_TEXT,), expect_figure=True),
    ),
    "05e_scaling_laws": (
        WidgetCheck(
            "compute-budget calculator",
            anchor="compute budget C (FLOPs)",
            result=".widget-html-content",
            steps=(Step("fill", "compute budget C (FLOPs)", "3e18"),),
        ),
    ),
    "06a_classification_and_search": (
        WidgetCheck(
            "semantic search",
            anchor="Query:",
            result=".widget-html-content",
            steps=(
                Step("fill", "Query:", "a terrible boring film with bad acting"),
                Step("slider", "results", "ArrowRight"),
            ),
        ),
    ),
    "06b_generation_and_decoding": (
        WidgetCheck(
            "decoding playground",
            anchor="Generate",
            result=".widget-html-content",
            steps=(
                Step("fill", "seed", "12345", changes=False),
                Step("click", "Generate"),
            ),
        ),
    ),
    "07_faq": (_COST,),
}


# --------------------------------------------------------------------------------------------------
# Pure parts: classifying requests, judging a chapter, the table
# --------------------------------------------------------------------------------------------------


def is_local_url(url: str) -> bool:
    """True for a URL that stays on this machine (127.0.0.1, localhost, ::1, or no network)."""
    parsed = urlparse(url)
    if parsed.scheme in LOCAL_SCHEMES:
        return True
    return parsed.hostname in LOCAL_HOSTS


def harmless_console_error(text: str) -> bool:
    return any(re.search(pattern, text) for pattern, _why in HARMLESS_CONSOLE_ERRORS)


@dataclass
class ChapterResult:
    chapter: str
    stored_figures: int = 0  # figures in the committed notebook's outputs
    figures: int = 0  # div.llmbook-plotly in the live outputs
    drawn: int = 0  # ... of which hold an svg.main-svg
    undrawn_ids: list[str] = field(default_factory=list)
    views: int = 0  # bertviz views in the live outputs
    views_drawn: int = 0  # ... of which hold an svg
    widgets_checked: int = 0
    widget_failures: list[str] = field(default_factory=list)
    errors: list[str] = field(
        default_factory=list
    )  # error outputs and printed tracebacks
    not_executed: list[int] = field(
        default_factory=list
    )  # code cells without execution count
    external: list[str] = field(
        default_factory=list
    )  # URLs of requests that left localhost
    console: list[str] = field(
        default_factory=list
    )  # console errors, harmless ones removed
    problem: str = ""  # the run itself failed (timeout, page did not load)
    seconds: float = 0.0
    phases: dict[str, float] = field(
        default_factory=dict
    )  # seconds per step of the check
    screenshot: str = ""

    def failures(self) -> list[str]:
        """Everything a reader would see go wrong, one sentence each (empty: the chapter passed)."""
        out = []
        if self.problem:
            out.append(self.problem)
        if self.drawn < self.figures:
            out.append(
                f"{self.figures - self.drawn} of {self.figures} plotly figures not drawn "
                f"(no svg.main-svg in {', '.join(self.undrawn_ids[:5])})"
            )
        if self.views_drawn < self.views:
            out.append(
                f"{self.views - self.views_drawn} of {self.views} bertviz views not drawn"
            )
        if self.figures < self.stored_figures:
            out.append(
                f"the live run shows {self.figures} plotly figures, the stored notebook "
                f"{self.stored_figures}"
            )
        out += [f"widget: {w}" for w in self.widget_failures]
        out += [f"error output: {e}" for e in self.errors]
        if self.not_executed:
            cells = ", ".join(map(str, self.not_executed[:10]))
            out.append(
                f"{len(self.not_executed)} code cells not executed (cells {cells})"
            )
        hosts = sorted({urlparse(u).hostname or u for u in self.external})
        if self.external:
            out.append(
                f"{len(self.external)} requests left localhost (to {', '.join(hosts)}): "
                f"{self.external[0]}"
            )
        out += [f"console error: {c}" for c in self.console]
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()


def _mark(good: bool) -> str:
    return "ok" if good else "FAIL"


def format_table(results: list[ChapterResult]) -> str:
    """One row per chapter: figures drawn/found, widgets answering/checked, counts and time."""
    header = (
        "chapter",
        "figures drawn/found",
        "bertviz drawn/found",
        "widgets ok/checked",
        "errors",
        "external",
        "console",
        "seconds",
        "result",
    )
    rows = [header]
    for r in results:
        widgets_ok = r.widgets_checked - len(r.widget_failures)
        rows.append(
            (
                r.chapter,
                f"{r.drawn}/{r.figures}",
                f"{r.views_drawn}/{r.views}",
                f"{widgets_ok}/{r.widgets_checked}",
                str(len(r.errors) + len(r.not_executed) + bool(r.problem)),
                str(len(r.external)),
                str(len(r.console)),
                f"{r.seconds:.0f}",
                _mark(r.ok),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def report(results: list[ChapterResult]) -> tuple[str, int]:
    """The table, then every failure by chapter; exit status 1 if any chapter failed."""
    text = [format_table(results)]
    failed = [r for r in results if not r.ok]
    for r in failed:
        text.append(f"\n{r.chapter}:")
        text += [f"  - {f}" for f in r.failures()]
    total = sum(r.seconds for r in results)
    if failed:
        text.append(
            f"\nlive check FAILED: {len(failed)} of {len(results)} chapters ({total:.0f} s)"
        )
    else:
        text.append(f"\nlive check passed: {len(results)} chapters ({total:.0f} s)")
    return "\n".join(text), 1 if failed else 0


def select_chapters(names: list[str], available: list[str] = ALL_CHAPTERS) -> list[str]:
    """Chapters by file-name prefix (``05e``, ``07_faq``), in file order; unknown names fail.
    No names: :data:`DEFAULT_CHAPTERS`; ``all``: every chapter."""
    if not names:
        return list(DEFAULT_CHAPTERS)
    if names == ["all"]:
        return list(available)
    chosen = set()
    for name in names:
        stem = Path(name).stem
        hits = [c for c in available if c.startswith(stem)]
        if not hits:
            raise SystemExit(
                f"live_check: no chapter matches {name!r} (have {available})"
            )
        chosen.update(hits)
    return [c for c in available if c in chosen]


def stored_figure_count(notebook: Path) -> int:
    """How many plotly figures the committed notebook's outputs show."""
    nb = json.loads(notebook.read_text())
    count = 0
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            html = output.get("data", {}).get("text/html", "")
            count += "".join(html).count('class="llmbook-plotly"')
    return count


# --------------------------------------------------------------------------------------------------
# Jupyter Server
# --------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# User settings of the temporary JupyterLab: no news or update checks (they would ask a website).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
SERVER_CONFIG = {
    "LabApp": {
        "news_url": None,
        "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
        "extension_manager": "readonly",
    },
}


class JupyterServer:
    """``jupyter lab`` on 127.0.0.1 serving ``root``, its Jupyter folders under ``home``."""

    def __init__(self, root: Path, home: Path, log: Path):
        self.root, self.home, self.log_path = root, home, log
        self.port = _free_port()
        self.token = os.urandom(24).hex()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self._stopping: list[threading.Thread] = []

    def environment(self) -> dict[str, str]:
        # No Jupyter settings of the caller, and no LLMBOOK_PLOTLY=site (make nbval's choice):
        # figures are checked the way a reader's JupyterLab draws them.
        drop = ("JUPYTER", "JPY_", "LLMBOOK_PLOTLY")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        dirs = {
            "JUPYTER_CONFIG_DIR": "config",
            "JUPYTER_RUNTIME_DIR": "runtime",
            "JUPYTER_DATA_DIR": "data",
            "JUPYTERLAB_SETTINGS_DIR": "lab-settings",
            "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
            "IPYTHONDIR": "ipython",
        }
        for var, name in dirs.items():
            (self.home / name).mkdir(parents=True, exist_ok=True)
            env[var] = str(self.home / name)
        env["LLMBOOK_PROFILE"] = "smoke"  # LLMBOOK_DATA_DIR, if set, passes through
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), env.get("PYTHONPATH")])
        )
        return env

    def __enter__(self) -> JupyterServer:
        env = self.environment()
        config = Path(env["JUPYTER_CONFIG_DIR"]) / "jupyter_server_config.json"
        config.write_text(json.dumps(SERVER_CONFIG))
        for name, settings in LAB_SETTINGS.items():
            path = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings))
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.open_browser=False",
            "--LabApp.expose_app_in_browser=True",
            f"--ServerApp.root_dir={self.root}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # containers and CI often run as root
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            cmd, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited:\n{self.log_tail()}")
            try:
                self.api("GET", "status")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(
            f"jupyter lab did not answer within 90 s:\n{self.log_tail()}"
        )

    def __exit__(self, *exc) -> None:
        for thread in self._stopping:
            thread.join(timeout=30)
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def api(self, method: str, path: str):
        request = urllib.request.Request(
            f"{self.base}/api/{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Shut down every running kernel; the server's (slow, graceful) shutdowns run in a thread
        while the next chapter loads, and ``__exit__`` waits for them."""
        paths = [f"sessions/{s['id']}" for s in self.api("GET", "sessions")]
        paths += [f"kernels/{k['id']}" for k in self.api("GET", "kernels")]

        def stop() -> None:
            for path in paths:
                try:
                    self.api("DELETE", path)
                except urllib.error.HTTPError:
                    pass  # 404: the kernel already went with its session

        thread = threading.Thread(target=stop, daemon=True)
        thread.start()
        self._stopping.append(thread)

    def lab_url(self, notebook: str) -> str:
        return f"{self.base}/lab/tree/notebooks/{notebook}?reset&token={self.token}"


# --------------------------------------------------------------------------------------------------
# The browser side
# --------------------------------------------------------------------------------------------------

# Resolves once the notebook is open, its kernel started and idle.
JS_WAIT_READY = """async () => {
  const panel = window.jupyterapp.shell.currentWidget;
  await panel.context.ready;
  await panel.sessionContext.ready;
  const kernel = panel.sessionContext.session.kernel;
  // Errors of widget callbacks (comm messages) never reach a cell's outputs: record them here.
  window.__llmbookCallbackErrors = [];
  kernel.iopubMessage.connect((_, msg) => {
    const parent = msg.parent_header && msg.parent_header.msg_type;
    if (msg.header.msg_type === "error" && parent !== "execute_request") {
      window.__llmbookCallbackErrors.push(`${parent}: ${msg.content.ename}: ${msg.content.evalue}`);
    }
  });
  for (let i = 0; i < 600 && !(kernel.status === "idle" && kernel.connectionStatus === "connected");
       i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  return kernel.status;
}"""
JS_RUN_ALL = """() => {
  const app = window.jupyterapp;
  window.__llmbookRun = {done: false};
  app.commands.execute("notebook:clear-all-cell-outputs")
    .then(() => app.commands.execute("notebook:run-all-cells"))
    .then((ok) => { window.__llmbookRun = {done: true, ok: ok}; },
          (err) => { window.__llmbookRun = {done: true, ok: false, error: String(err)}; });
}"""
JS_FINISHED = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return window.__llmbookRun.done && kernel && kernel.status === "idle";
}"""
FIGURES = ".jp-OutputArea div.llmbook-plotly"
JS_ALL_DRAWN = """() => {
  const node = window.jupyterapp.shell.currentWidget.node;
  return [...node.querySelectorAll(".jp-OutputArea div.llmbook-plotly")]
    .every((d) => d.querySelector("svg.main-svg"))
    && [...node.querySelectorAll('.jp-OutputArea div[id^="bertviz-"]')]
    .every((d) => d.querySelector("svg"));
}"""
# What the page shows once the run is over.
JS_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const code = panel.content.widgets
    .map((cell, i) => [cell, i])
    .filter(([cell]) => cell.model.type === "code");
  const errors = [];
  for (const [cell, i] of code) {
    for (const out of cell.model.outputs.toJSON()) {
      if (out.output_type === "error") errors.push(`cell ${i}: ${out.ename}: ${out.evalue}`);
    }
  }
  for (const node of panel.node.querySelectorAll(
      '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]')) {
    const text = node.textContent;
    if (/Traceback \\(most recent call last\\)/.test(text) && !errors.length) {
      errors.push("printed traceback: " + text.trim().split("\\n").slice(-1)[0].slice(0, 200));
    }
  }
  errors.push(...window.__llmbookCallbackErrors.map((e) => "widget callback " + e));
  const divs = [...panel.node.querySelectorAll(".jp-OutputArea div.llmbook-plotly")];
  const views = [...panel.node.querySelectorAll('.jp-OutputArea div[id^="bertviz-"]')];
  return {
    run: window.__llmbookRun,
    notExecuted: code.filter(([cell]) => cell.model.executionCount === null).map(([, i]) => i),
    errors: errors,
    figures: divs.length,
    drawn: divs.filter((d) => d.querySelector("svg.main-svg")).length,
    undrawn: divs.filter((d) => !d.querySelector("svg.main-svg")).map((d) => d.id),
    views: views.length,
    viewsDrawn: views.filter((d) => d.querySelector("svg")).length,
  };
}"""


def _widget_output(page, check: WidgetCheck):
    """The cell output holding the widget: it has a label or a button with text ``anchor``."""
    exact = re.compile(rf"^\s*{re.escape(check.anchor)}\s*$")
    anchor = page.locator("label.widget-label, button.widget-button").filter(
        has_text=exact
    )
    return page.locator(".jp-OutputArea-output").filter(has=anchor).nth(check.index)


def _do_step(output, step: Step) -> None:
    exact = re.compile(rf"^\s*{re.escape(step.target)}\s*$")
    if step.action == "click":
        output.locator("button.widget-button").filter(has_text=exact).first.click()
        return
    label = output.page.locator("label.widget-label").filter(has_text=exact)
    box = output.locator(".widget-inline-hbox").filter(has=label).first
    if step.action == "fill":
        field_ = box.locator("input, textarea").first
        field_.fill(step.value)
        if field_.evaluate("(e) => e.tagName") == "INPUT":
            field_.press("Enter")
        field_.evaluate(
            "(e) => e.blur()"
        )  # text areas (and number boxes) sync on leaving
    elif step.action == "slider":
        handle = box.locator(".noUi-handle").first
        handle.focus()
        handle.press(step.value)
    else:
        raise ValueError(f"unknown widget action {step.action!r}")


def check_widget(page, check: WidgetCheck, timeout_s: float) -> str | None:
    """Run the steps of ``check`` on the page; None if the widget answered, else what went wrong."""
    output = _widget_output(page, check)
    if output.count() == 0:
        return f"{check.name}: not rendered (no widget with {check.anchor!r} #{check.index})"
    output.scroll_into_view_if_needed()
    result = output.locator(check.result).first
    if result.count() == 0:
        return f"{check.name}: no {check.result} in its output"
    for step in check.steps:
        before = result.inner_html()
        try:
            _do_step(output, step)
        except Exception as err:  # Playwright errors: say which step could not be done
            return (
                f"{check.name}: could not {step.action} {step.target!r}: {err}".split(
                    "\n"
                )[0]
            )
        if not step.changes:
            continue
        deadline = time.monotonic() + timeout_s
        while result.inner_html() == before:
            if time.monotonic() > deadline:
                return (
                    f"{check.name}: output unchanged {timeout_s:.0f} s after "
                    f"{step.action} {step.target!r}"
                )
            page.wait_for_timeout(250)
        if check.expect_figure:
            figure = result.locator("div.llmbook-plotly svg.main-svg")
            try:
                figure.first.wait_for(state="attached", timeout=timeout_s * 1000)
            except Exception:
                return (
                    f"{check.name}: output changed after {step.action} {step.target!r}, "
                    f"but its figure was not drawn"
                )
    return None


def check_chapter(
    context, server: JupyterServer, chapter: str, out: Path, args
) -> ChapterResult:
    result = ChapterResult(
        chapter, stored_figures=stored_figure_count(NOTEBOOKS / f"{chapter}.ipynb")
    )
    start = lap = time.monotonic()

    def phase(name: str) -> None:
        nonlocal lap
        now = time.monotonic()
        result.phases[name] = now - lap
        lap = now

    # A new page (a new tab: nothing of the previous chapter's window, such as its window.Plotly,
    # is left) in a context shared by all chapters, so that JupyterLab's code is loaded from the
    # browser's cache after the first chapter.
    page = context.new_page()

    def on_request(request):
        if not is_local_url(request.url):
            result.external.append(request.url)

    def on_console(message):
        if message.type == "error" and not harmless_console_error(message.text):
            where = message.location.get("url", "")
            result.console.append(f"{message.text[:300]} ({where})")

    page.on("request", on_request)
    page.on(
        "websocket",
        lambda ws: None if is_local_url(ws.url) else result.external.append(ws.url),
    )
    page.on("console", on_console)
    page.on(
        "pageerror", lambda err: result.console.append(f"uncaught: {str(err)[:300]}")
    )
    # Nothing may leave this machine: block it (and report it above) rather than wait on it.
    page.route(
        lambda url: not is_local_url(url), lambda route: route.abort("blockedbyclient")
    )
    try:
        page.goto(server.lab_url(f"{chapter}.ipynb"), timeout=120_000)
        page.wait_for_function(
            "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
            " && window.jupyterapp.shell.currentWidget.sessionContext",
            timeout=120_000,
            polling=250,
        )
        phase("load")
        page.evaluate(JS_WAIT_READY)
        phase("kernel")
        page.evaluate(JS_RUN_ALL)
        page.wait_for_function(JS_FINISHED, timeout=args.timeout * 1000, polling=1000)
        phase("run")
        try:  # plotly.js draws after the cell finished
            page.wait_for_function(
                JS_ALL_DRAWN, timeout=args.settle * 1000, polling=500
            )
        except Exception:
            pass  # counted below
        phase("draw")
        state = page.evaluate(JS_STATE)
        result.figures, result.drawn = state["figures"], state["drawn"]
        result.undrawn_ids = state["undrawn"]
        result.views, result.views_drawn = state["views"], state["viewsDrawn"]
        result.errors = state["errors"]
        result.not_executed = state["notExecuted"]
        if state["run"].get("error"):
            result.problem = f"run-all failed: {state['run']['error']}"
        if not result.errors and not result.not_executed:
            for check in WIDGET_CHECKS.get(chapter, ()):
                result.widgets_checked += 1
                failure = check_widget(page, check, args.widget_timeout)
                if failure:
                    result.widget_failures.append(failure)
            after = page.evaluate(JS_STATE)[
                "errors"
            ]  # tracebacks the interactions caused
            result.errors += [e for e in after if e not in result.errors]
            phase("widgets")
        elif WIDGET_CHECKS.get(chapter):
            result.widgets_checked = len(WIDGET_CHECKS[chapter])
            result.widget_failures = ["not checked: the run did not complete"]
        # The screenshot shows the first checked widget after the checks, else the first figure.
        checks = WIDGET_CHECKS.get(chapter, ())
        shown = (
            _widget_output(page, checks[0]) if checks else page.locator(FIGURES).first
        )
        if shown.count():
            shown.evaluate("(e) => e.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(500)
        shot = out / f"{chapter}.png"
        page.screenshot(path=str(shot))
        result.screenshot = str(shot)
    except Exception as err:  # a timeout or a page that never became a notebook
        result.problem = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        try:
            page.screenshot(path=str(out / f"{chapter}.png"))
        except Exception:
            pass
    finally:
        page.close()
        try:
            server.shutdown_kernels()
        except (urllib.error.URLError, ConnectionError) as err:
            result.problem = result.problem or f"could not shut the kernel down: {err}"
        phase("close")
        result.seconds = time.monotonic() - start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "chapters",
        nargs="*",
        help="file-name prefixes, or 'all' (default: every chapter with a figure or a widget)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "live")
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds per chapter run"
    )
    parser.add_argument(
        "--settle", type=float, default=30, help="seconds for figures to draw"
    )
    parser.add_argument(
        "--widget-timeout",
        type=float,
        default=60,
        help="seconds for a widget to answer",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    chapters = select_chapters(args.chapters)
    if not CHROMIUM.exists():
        print(
            f"live_check: {CHROMIUM} not found (apt-get install chromium)",
            file=sys.stderr,
        )
        return 1
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print(
            "live_check: playwright missing (make venv installs requirements.txt)",
            file=sys.stderr,
        )
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="llmbook-live-"))
    work = tmp / "work"
    (work / "notebooks").mkdir(parents=True)
    for chapter in ALL_CHAPTERS:  # a copy: the committed notebooks are never touched
        shutil.copy2(NOTEBOOKS / f"{chapter}.ipynb", work / "notebooks")
    print(
        f"live_check: {len(chapters)} chapters in JupyterLab (smoke profile), work dir {work}"
    )
    results = []
    try:
        with JupyterServer(
            work, tmp / "jupyter", args.out / "jupyter-server.log"
        ) as server:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
                )
                context = browser.new_context(
                    viewport={"width": 1280, "height": 900}, service_workers="block"
                )
                try:
                    for chapter in chapters:
                        result = check_chapter(context, server, chapter, args.out, args)
                        results.append(result)
                        status = (
                            "ok" if result.ok else "; ".join(result.failures())[:300]
                        )
                        steps = ", ".join(
                            f"{k} {v:.0f}" for k, v in result.phases.items()
                        )
                        print(
                            f"  {chapter}: {result.seconds:.0f} s ({steps}), {status}",
                            flush=True,
                        )
                finally:
                    browser.close()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    text, status = report(results)
    print(text)
    print(f"screenshots in {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
