"""Sphinx extension: serve the site's JavaScript from ``_static/vendor``, and only where it is used.

``tools/vendor_js.py`` fills ``book/_vendor/vendor`` (copied by Sphinx to ``_static/vendor``). When
those files are there, this extension points MathJax, the ipywidgets manager (and its require.js)
and mermaid at them, and adds plotly.js to the pages that hold a plotly figure. When they are
missing (no npm at build time) it leaves the CDN defaults and prints a warning.

It also keeps the console of every page clean:

- thebe is not used (the launch button opens Colab), but sphinx-thebe declares its config twice
  ("Identifier 'THEBE_JS_URL' has already been declared"): its scripts are dropped;
- the theme's colour mode defaults to ``auto`` (sphinx-book-theme leaves pydata's ``default_mode``
  empty, which logs "invalid theme mode");
- on pages with widgets, the widget manager finds its fonts in ``_static/vendor/html-manager``
  (a require.js path for its module and ``window.__jupyter_widgets_assets_path__``), and its
  MathJax 2 call ``MathJax.Hub.Queue`` is
  answered by MathJax 3's ``typesetPromise`` (:data:`WIDGETS_SHIM`).
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
WIDGETS_SCRIPT = "html-manager/embed-amd.js"
# The shim must run before require.js and the widget manager (priority 500), as plotly.js does.
WIDGETS_SHIM_PRIORITY = PLOTLY_PRIORITY

# Runs before the widget manager. MathJax 3 replaces window.MathJax (its config object) with
# itself when it loads; the accessor gives every value assigned there a Hub.Queue that typesets
# with MathJax 3 once it is ready.
WIDGETS_SHIM = """(function () {
  var root = document.documentElement.dataset.content_root || "";
  // The manager's modules compute where their fonts are from their AMD module URLs, which
  // require.js puts under the page's folder ("@jupyter-widgets/base" -> "./@jupyter-widgets/"). Map
  // every module id it defines into the vendored folder, where the fonts are (a global "require"
  // object defined before require.js loads is its configuration).
  if (window.require === undefined) {
    var folder = root + "_static/vendor/html-manager";
    var paths = {"@jupyter-widgets/html-manager/dist": folder};
    ["base", "controls", "base7", "controls7", "html-manager"].forEach(function (name) {
      paths["@jupyter-widgets/" + name] = folder + "/" + name;
    });
    window.require = {paths: paths};
  }
  window.__jupyter_widgets_assets_path__ = root + "_static/vendor/html-manager/";
  function whenReady(run) {
    var mj = current;
    if (mj && mj.startup && mj.startup.promise && mj.typesetPromise) {
      mj.startup.promise.then(function () { run(mj); });
    } else {
      setTimeout(function () { whenReady(run); }, 100);
    }
  }
  function queue() {
    var jobs = Array.prototype.slice.call(arguments);
    whenReady(function (mj) {
      jobs.forEach(function (job) {
        if (Array.isArray(job) && job[0] === "Typeset" && job[2]) mj.typesetPromise([job[2]]);
        else if (typeof job === "function") job();
      });
    });
  }
  function withHub(value) {
    if (value && typeof value === "object" && !value.Hub) value.Hub = {Queue: queue};
    return value;
  }
  var current = withHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (value) { current = withHub(value); },
  });
})();"""


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


def _is_thebe(script) -> bool:
    filename = str(getattr(script, "filename", script) or "")
    body = getattr(script, "attributes", {}).get("body", "")
    return (
        filename.endswith("sphinx-thebe.js")
        or "THEBE_JS_URL" in body
        or "thebe@" in filename
    )


def _page_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if scripts is None:
        return
    scripts[:] = [s for s in scripts if not _is_thebe(s)]
    # sphinx-book-theme does not declare pydata's default_mode option, so the template gets ""
    if not context.get("default_mode"):
        context["default_mode"] = "auto"
    if doctree is None:
        return
    names = [str(getattr(s, "filename", s) or "") for s in scripts]
    if any(name.endswith(WIDGETS_SCRIPT) for name in names):
        app.add_js_file(None, body=WIDGETS_SHIM, priority=WIDGETS_SHIM_PRIORITY)
    if "plotly.min.js" in " ".join(names):
        return
    if "llmbook-plotly" in context.get("body", ""):
        if app.config.llmbook_offline or (VENDOR / "plotly.min.js").exists():
            app.add_js_file("vendor/plotly.min.js", priority=PLOTLY_PRIORITY)


def setup(app):
    app.add_config_value("llmbook_offline", False, "html")
    app.connect("config-inited", _configure)
    app.connect("html-page-context", _page_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
