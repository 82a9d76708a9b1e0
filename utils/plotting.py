"""Plotly figures that draw in the static site, in live notebooks (online or offline) and under nbval.

Plotly's default notebook output (the ``application/vnd.plotly.v1+json`` mimetype) is dropped by
myst-nb, and its standalone HTML embeds plotly.js (about 4.8 MB) in every figure. :func:`show`
writes a small ``text/html`` output instead: a ``<div>`` plus a script that draws the figure with
the page's ``window.Plotly``. Where that plotly.js comes from depends on who shows the page
(:func:`plotly_source`):

- ``site``: the built book serves plotly.js itself (``_static/vendor/plotly.min.js``), so the
  figure carries no loader. The book's executor and ``make nbval`` choose this explicitly
  (``LLMBOOK_PLOTLY=site``); it is also the default where no live front end is detected.
- ``inline``: a live JupyterLab, Jupyter Notebook or VS Code session, online or offline. The first
  figure of a kernel session carries plotly.js from the *installed* plotly package (no network);
  later figures reuse the page's ``window.Plotly``.
- ``cdn``: Google Colab, where every output lives in its own frame (nothing is shared between
  figures) and the network is there: each figure loads the plotly.js version that the installed
  plotly bundles (``plotly.offline.get_plotlyjs_version()``, not plotly.py's own version).

``LLMBOOK_PLOTLY`` overrides the choice. The ``<div>`` id is derived from the figure's content, so
re-running a notebook yields byte-identical output and nbval can compare it.
"""

from __future__ import annotations

import hashlib
import json
import os

import plotly
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline
from plotly.io._base_renderers import MimetypeRenderer

from .nb import in_colab

RENDERER_NAME = "llmbook"
SOURCE_ENV = "LLMBOOK_PLOTLY"
SOURCES = ("site", "inline", "cdn")

# True once this kernel has sent plotly.js to the page (inline source only).
_plotly_js_sent = False


def _live_frontend() -> bool:
    """True in a kernel that a person's notebook front end started (not papermill or nbval).

    jupyter_server (JupyterLab, Notebook 7) puts ``JPY_SESSION_NAME`` in its kernels' environment;
    VS Code defines ``__vsc_ipynb_file__`` in the kernel's namespace.
    """
    if os.environ.get("JPY_SESSION_NAME"):
        return True
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "__vsc_ipynb_file__" in shell.user_ns


def plotly_source() -> str:
    """Where the page gets plotly.js: ``"site"``, ``"inline"`` or ``"cdn"`` (module docstring)."""
    chosen = os.environ.get(SOURCE_ENV, "").strip().lower()
    if chosen:
        if chosen not in SOURCES:
            raise ValueError(
                f"{SOURCE_ENV}={chosen!r} is not one of {', '.join(SOURCES)}: 'site' for the built "
                "book, 'inline' for a live notebook (offline too), 'cdn' for Colab"
            )
        return chosen
    if in_colab():
        return "cdn"
    return "inline" if _live_frontend() else "site"


def plotly_cdn_url() -> str:
    """The CDN address of the plotly.js that the installed plotly bundles."""
    return f"https://cdn.plot.ly/plotly-{plotly.offline.get_plotlyjs_version()}.min.js"


def _figure_json(fig: go.Figure | dict) -> str:
    fig_dict = fig.to_dict() if isinstance(fig, go.Figure) else fig
    # plotly's encoder handles numpy arrays and NaN; sort_keys makes the id content-derived.
    return json.dumps(fig_dict, cls=plotly.utils.PlotlyJSONEncoder, sort_keys=True)


def plotly_js_html() -> str:
    """A script that defines ``window.Plotly`` from the installed package and draws queued figures.

    require.js (loaded by classic notebooks and by the widget manager) would make plotly.js register
    as an AMD module instead of a global, so ``define`` is hidden while it runs.
    """
    return (
        '<script type="text/javascript">\n'
        "(function () { var define = undefined;\n"
        + plotly.offline.get_plotlyjs()
        + "\n})();\n"
        "(window.__llmbookPlotlyQueue || []).forEach(function (f) { f(); });\n"
        "window.__llmbookPlotlyQueue = [];\n"
        "</script>\n"
    )


_MISSING_PLOTLY = (
    "This figure needs plotly.js, which this page does not have. In a live notebook the first "
    "figure of a kernel session brings it: restart the kernel and run the notebook from the top "
    "(or set LLMBOOK_PLOTLY=inline before starting Jupyter)."
)

_CDN_LOADER = """
  if (window.__llmbookPlotlyLoading) return;
  window.__llmbookPlotlyLoading = true;
  var flush = function () { window.__llmbookPlotlyQueue.forEach(function (f) { f(); }); };
  // require.js (loaded for widgets) makes plotly.js register as an AMD module, not a global.
  if (typeof window.define === "function" && window.define.amd && window.require) {
    window.require.config({paths: {plotly: "URL_NO_EXT"}});
    window.require(["plotly"], function (P) { window.Plotly = P; flush(); });
  } else {
    var s = document.createElement("script");
    s.src = "URL";
    s.onload = flush;
    document.head.appendChild(s);
  }"""

_NO_LOADER = """
  setTimeout(function () {
    if (window.Plotly) return;
    var div = document.getElementById("DIV_ID");
    if (div && !div.hasChildNodes()) div.textContent = MESSAGE;
  }, 4000);"""


def figure_html(
    fig: go.Figure | dict, height: int | None = None, source: str | None = None
) -> str:
    """The HTML fragment that draws ``fig``: a div plus a short script.

    ``source`` (default :func:`plotly_source`) says where plotly.js comes from; only the first
    figure of an ``inline`` session carries plotly.js itself.
    """
    global _plotly_js_sent
    source = source or plotly_source()
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not one of {', '.join(SOURCES)}")
    fig_json = _figure_json(fig)
    div_id = "fig-" + hashlib.sha1(fig_json.encode()).hexdigest()[:12]
    layout_height = json.loads(fig_json).get("layout", {}).get("height")
    css_height = height or layout_height or 450
    if source == "cdn":
        url = plotly_cdn_url()
        loader = _CDN_LOADER.replace("URL_NO_EXT", url[: -len(".js")]).replace(
            "URL", url
        )
    else:  # site, or inline after the first figure: the page has (or will have) plotly.js
        loader = _NO_LOADER.replace("DIV_ID", div_id).replace(
            "MESSAGE", json.dumps(_MISSING_PLOTLY)
        )
    library = ""
    if source == "inline" and not _plotly_js_sent:
        library = plotly_js_html()
        _plotly_js_sent = True
    return f"""<div id="{div_id}" class="llmbook-plotly" style="width:100%;height:{css_height}px;"></div>
<script type="text/javascript">
(function () {{
  var fig = {fig_json};
  var config = {{"responsive": true, "displaylogo": false}};
  function draw() {{ window.Plotly.newPlot("{div_id}", fig.data, fig.layout, config); }}
  if (window.Plotly) {{ draw(); return; }}
  window.__llmbookPlotlyQueue = window.__llmbookPlotlyQueue || [];
  window.__llmbookPlotlyQueue.push(draw);{loader}
}})();
</script>
{library}"""


class _StaticHtmlRenderer(MimetypeRenderer):
    """Plotly renderer registered as ``"llmbook"`` so that ``fig.show()`` behaves like :func:`show`."""

    def to_mimebundle(self, fig_dict):
        return {"text/html": figure_html(fig_dict)}


def use_book_renderer() -> None:
    """Make ``fig.show()`` use the book's renderer (called on import of this module)."""
    pio.renderers[RENDERER_NAME] = _StaticHtmlRenderer()
    pio.renderers.default = RENDERER_NAME


class _HtmlOutput:
    """Displays as ``text/html``, with a stable ``text/plain`` line.

    Without one, IPython adds ``<_HtmlOutput at 0x...>``, which changes on every run.
    """

    def __init__(self, html: str, text: str = "[plotly figure]"):
        self.html = html
        self.text = text

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": self.html, "text/plain": self.text}

    def __repr__(self) -> str:
        return self.text


def show(fig: go.Figure, height: int | None = None) -> None:
    """Display ``fig`` in a notebook as static-site-friendly HTML (see the module docstring)."""
    from IPython.display import display

    title = fig.layout.title.text or "untitled"
    display(
        _HtmlOutput(figure_html(fig, height=height), text=f"[plotly figure: {title}]")
    )


use_book_renderer()
