"""Sphinx extension: serve the site's JavaScript from ``_static/vendor`` instead of CDNs.

``tools/vendor_js.py`` fills ``book/_vendor/vendor`` (copied by Sphinx to ``_static/vendor``). When
those files are there, this extension points MathJax, the ipywidgets manager (and its require.js)
and mermaid at them, and adds plotly.js to the pages that hold a plotly figure. When they are
missing (no npm at build time) it leaves the CDN defaults and prints a warning.
"""

from __future__ import annotations

from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "_vendor" / "vendor"
REQUIRED = [
    "mathjax/tex-chtml.js",
    "require.js",
    "html-manager/embed-amd.js",
    "mermaid/mermaid.esm.min.mjs",
    "plotly.min.js",
]
# Loaded before require.js (priority 500): plotly.js then defines window.Plotly instead of
# registering an anonymous AMD module, which require.js would reject.
PLOTLY_PRIORITY = 200


def _configure(app, config):
    missing = [f for f in REQUIRED if not (VENDOR / f).exists()]
    if missing:
        print(
            f"WARNING (offline_assets): {', '.join(missing)} not vendored; the site will load "
            "them from CDNs. Run `python tools/vendor_js.py` (needs npm) for an offline site."
        )
        config.llmbook_offline = False
        return
    config.llmbook_offline = True
    config.mathjax_path = "vendor/mathjax/tex-chtml.js"
    config.nb_ipywidgets_js = {
        "vendor/require.js": {},
        "vendor/html-manager/embed-amd.js": {},
    }
    config.mermaid_use_local = "vendor/mermaid/mermaid.esm.min.mjs"


def _plotly_on_pages_with_figures(app, pagename, templatename, context, doctree):
    if doctree is None or "plotly.min.js" in str(context.get("script_files", "")):
        return
    if "llmbook-plotly" in context.get("body", ""):
        if app.config.llmbook_offline or (VENDOR / "plotly.min.js").exists():
            app.add_js_file("vendor/plotly.min.js", priority=PLOTLY_PRIORITY)


def setup(app):
    app.add_config_value("llmbook_offline", False, "html")
    app.connect("config-inited", _configure)
    app.connect("html-page-context", _plotly_on_pages_with_figures)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
