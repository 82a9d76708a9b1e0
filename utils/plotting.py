"""Plotly figures that work in the static site, in live notebooks and under nbval.

Plotly's default notebook output (the ``application/vnd.plotly.v1+json`` mimetype) is dropped by
myst-nb, and its standalone HTML embeds 3.5 MB of plotly.js per figure. :func:`show` writes a small
``text/html`` output instead: a ``<div>`` plus a script that draws the figure with the page's own
``window.Plotly``. The built site serves plotly.js itself (``_static/vendor/plotly.min.js``); in a
live Jupyter or Colab session, where no page-level Plotly exists, the script loads plotly.js once
from the CDN of the installed plotly version. The ``<div>`` id is derived from the figure's content,
so re-running a notebook yields byte-identical output and nbval can compare it.
"""

from __future__ import annotations

import hashlib
import json

import plotly
import plotly.graph_objects as go
import plotly.io as pio
from plotly.io._base_renderers import MimetypeRenderer

RENDERER_NAME = "llmbook"


def _figure_json(fig: go.Figure | dict) -> str:
    fig_dict = fig.to_dict() if isinstance(fig, go.Figure) else fig
    # plotly's encoder handles numpy arrays and NaN; sort_keys makes the id content-derived.
    return json.dumps(fig_dict, cls=plotly.utils.PlotlyJSONEncoder, sort_keys=True)


def figure_html(fig: go.Figure | dict, height: int | None = None) -> str:
    """Return the HTML fragment that draws ``fig``: a div plus a short script (no plotly.js inside)."""
    fig_json = _figure_json(fig)
    div_id = "fig-" + hashlib.sha1(fig_json.encode()).hexdigest()[:12]
    layout_height = json.loads(fig_json).get("layout", {}).get("height")
    css_height = height or layout_height or 450
    cdn = f"https://cdn.plot.ly/plotly-{plotly.__version__}.min.js"
    # The fallback loader only runs where the page has no Plotly (a live notebook): the built site
    # loads plotly.js from _static before any figure, so nothing is fetched from another host there.
    return f"""<div id="{div_id}" class="llmbook-plotly" style="width:100%;height:{css_height}px;"></div>
<script type="text/javascript">
(function () {{
  var fig = {fig_json};
  var config = {{"responsive": true, "displaylogo": false}};
  function draw() {{ window.Plotly.newPlot("{div_id}", fig.data, fig.layout, config); }}
  if (window.Plotly) {{ draw(); return; }}
  window.__llmbookPlotlyQueue = window.__llmbookPlotlyQueue || [];
  window.__llmbookPlotlyQueue.push(draw);
  if (window.__llmbookPlotlyLoading) return;
  window.__llmbookPlotlyLoading = true;
  var loadPlotly = function () {{
    var s = document.createElement("script");
    s.src = "{cdn}";
    s.onload = function () {{ window.__llmbookPlotlyQueue.forEach(function (f) {{ f(); }}); }};
    document.head.appendChild(s);
  }};
  // require.js (loaded for widgets) makes plotly.js register as an AMD module instead of a global.
  if (typeof window.define === "function" && window.define.amd && window.require) {{
    window.require.config({{paths: {{plotly: "{cdn[:-3]}"}}}});
    window.require(["plotly"], function (P) {{ window.Plotly = P;
      window.__llmbookPlotlyQueue.forEach(function (f) {{ f(); }}); }});
  }} else {{ loadPlotly(); }}
}})();
</script>"""


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
    display(_HtmlOutput(figure_html(fig, height=height), text=f"[plotly figure: {title}]"))


use_book_renderer()
