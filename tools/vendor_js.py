"""Vendor the JavaScript the built site needs, so that no page loads anything from a CDN.

Fetches pinned packages from the npm registry with ``npm pack`` (a cache in ``.cache/npm``), copies
the few files each needs into ``book/_vendor/vendor/`` (git-ignored), and copies plotly.min.js from
the installed plotly package. Sphinx copies that folder to ``_build/html/_static/vendor/``; the local
extension ``book/_ext/offline_assets.py`` points MathJax, the widget manager, mermaid and plotly at
those copies.

If npm is missing, nothing is vendored and the build falls back to the CDNs with a printed warning
(the offline check in the test command then fails, as it should).

Usage: ``python tools/vendor_js.py`` (idempotent; a marker file records what was vendored).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "book" / "_vendor" / "vendor"
CACHE = ROOT / ".cache" / "npm"

# package spec -> (prefix stripped from the tarball path, destination folder in DEST, globs).
# Paths keep their layout below the stripped prefix: MathJax and mermaid load further files
# relative to their own location.
PACKAGES: dict[str, tuple[str, str, list[str]]] = {
    "mathjax@3.2.2": (
        "es5/",
        "mathjax/",
        [
            "es5/tex-chtml.js",
            "es5/output/chtml*",
            "es5/input/tex/extensions/*",
            "es5/a11y/*",
            "es5/ui/*",
            "es5/sre/*",
            "es5/adaptors/*",
        ],
    ),
    "requirejs@2.3.7": ("", "", ["require.js"]),
    # the widget manager's Font Awesome files: it loads them from the folder that
    # window.__jupyter_widgets_assets_path__ names (book/_ext/offline_assets.py sets it)
    "@jupyter-widgets/html-manager@1.0.14": (
        "dist/",
        "html-manager/",
        ["dist/embed-amd.js", "dist/*.woff2", "dist/*.woff", "dist/*.ttf"],
    ),
    "mermaid@11.12.1": (
        "dist/",
        "mermaid/",
        ["dist/mermaid.esm.min.mjs", "dist/chunks/mermaid.esm.min/*"],
    ),
    "d3@5.7.0": ("dist/", "", ["dist/d3.min.js"]),
    "jquery@3.7.1": ("dist/", "", ["dist/jquery.min.js"]),
}
MARKER = DEST / "VENDORED.json"

# The theme's fontawesome.js (pydata-sphinx-theme) carries every Font Awesome icon: 1.5 MB of
# JavaScript on every page for the ~20 icons of its navigation bar. The same library
# (fontawesome-svg-core, MIT) with only those icons (CC BY 4.0) replaces it: a file in
# html_static_path overrides the theme's static file of the same name. tools/site_check.py
# fails a page on which an icon was left unconverted (one missing from this list).
FONTAWESOME = {
    "core": "@fortawesome/fontawesome-svg-core@6.7.2",
    "fas": "@fortawesome/free-solid-svg-icons@6.7.2",
    "fab": "@fortawesome/free-brands-svg-icons@6.7.2",
}
ICONS = {
    "fas": [
        "angle-left",
        "angle-right",
        "arrow-up",
        "bars",
        "chevron-down",
        "circle-half-stroke",
        "download",
        "expand",
        "file",
        "file-pdf",
        "list",
        "magnifying-glass",
        "moon",
        "outdent",
        "rocket",
        "sun",
        "compress",
        "copy",
        "check",
        "xmark",
        "house",
        "circle-info",
    ],
    "fab": ["github"],
}
FONTAWESOME_OUT = DEST.parent / "scripts" / "fontawesome.js"


def _npm_pack(spec: str) -> Path:
    """Download ``spec``'s tarball into the cache (once) and return its path."""
    CACHE.mkdir(parents=True, exist_ok=True)
    name = spec.lstrip("@").replace("/", "-").replace("@", "-") + ".tgz"
    target = CACHE / name
    if not target.exists():
        out = subprocess.run(
            ["npm", "pack", "--silent", spec],
            cwd=CACHE,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        produced = CACHE / out.stdout.strip().splitlines()[-1]
        produced.rename(target)
    return target


def _extract(tarball: Path, strip: str, dest: str, globs: list[str]) -> int:
    count = 0
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            inner = member.name.removeprefix("package/")
            if not member.isfile() or not any(fnmatch.fnmatch(inner, g) for g in globs):
                continue
            target = DEST / dest / inner.removeprefix(strip)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            count += 1
    return count


def _tar_text(tarball: Path, inner: str) -> str:
    with tarfile.open(tarball, "r:gz") as tar:
        return tar.extractfile(f"package/{inner}").read().decode()


def _icon_definition(tarball: Path, prefix: str, name: str) -> dict:
    """``{prefix, iconName, icon: [width, height, aliases, unicode, path]}`` from an icon's
    CommonJS file in the npm package (``faMagnifyingGlass.js`` for ``magnifying-glass``)."""
    module = "fa" + "".join(part.capitalize() for part in name.split("-")) + ".js"
    text = _tar_text(tarball, module)

    def value(var: str) -> str:
        found = re.search(rf"^var {var} = (.*);$", text, flags=re.M)
        if found is None:
            raise SystemExit(f"vendor_js: no {var} in {module}")
        return found.group(1)

    path = json.loads(value("svgPathData").replace("'", '"'))
    return {
        "prefix": prefix,
        "iconName": name,
        "icon": [
            int(value("width")),
            int(value("height")),
            json.loads(value("aliases")),
            json.loads(value("unicode").replace("'", '"')),
            path,
        ],
    }


def _fontawesome_subset() -> Path:
    """Write ``scripts/fontawesome.js``: fontawesome-svg-core plus only :data:`ICONS`."""
    core = _tar_text(_npm_pack(FONTAWESOME["core"]), "index.js")
    definitions = [
        _icon_definition(_npm_pack(FONTAWESOME[prefix]), prefix, name)
        for prefix, names in ICONS.items()
        for name in names
    ]
    FONTAWESOME_OUT.parent.mkdir(parents=True, exist_ok=True)
    FONTAWESOME_OUT.write_text(
        "/* Font Awesome Free 6.7.2 (fontawesome-svg-core, MIT; icons CC BY 4.0,\n"
        " * https://fontawesome.com/license/free) with only the icons this site uses:\n"
        " * tools/vendor_js.py. */\n"
        # the UMD wrapper would register an anonymous AMD module where require.js is loaded
        "(function () { var define = undefined, exports = undefined, module = undefined;\n"
        + core
        + "\n}).call(window);\n"
        "(function (fa) {\n"
        f"  fa.library.add.apply(fa.library, {json.dumps(definitions)});\n"
        "  fa.dom.watch();\n"
        "})(window['fontawesome-svg-core']);\n"
    )
    return FONTAWESOME_OUT


def _plotly_js() -> Path:
    import plotly

    src = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    dst = DEST / "plotly.min.js"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def wanted() -> dict:
    import plotly

    # the whole table: a changed glob re-vendors as a changed version does
    return {
        "npm": {spec: list(rule) for spec, rule in sorted(PACKAGES.items())},
        "plotly": plotly.__version__,
        "fontawesome": {"packages": FONTAWESOME, "icons": ICONS},
    }


def main() -> int:
    if MARKER.exists() and json.loads(MARKER.read_text()) == wanted():
        print(f"vendor_js: up to date in {DEST.relative_to(ROOT)}")
        return 0
    if shutil.which("npm") is None:
        print(
            "WARNING: npm not found: the site will load MathJax, require.js, the widget manager "
            "and mermaid from CDNs (plotly.js is still local). Install Node.js/npm for an offline "
            "site.",
            file=sys.stderr,
        )
        if DEST.exists():
            shutil.rmtree(DEST)
        FONTAWESOME_OUT.unlink(missing_ok=True)  # the theme's own file is used instead
        _plotly_js()
        return 0
    if DEST.exists():
        shutil.rmtree(DEST)
    for spec, (strip, dest, globs) in PACKAGES.items():
        n = _extract(_npm_pack(spec), strip, dest, globs)
        if n == 0:
            raise SystemExit(f"vendor_js: no files matched in {spec}: {globs}")
        print(f"vendor_js: {spec}: {n} files")
    _plotly_js()
    if FONTAWESOME_OUT.exists():
        FONTAWESOME_OUT.unlink()
    out = _fontawesome_subset()
    print(f"vendor_js: Font Awesome subset: {out.stat().st_size / 1e3:.0f} kB")
    MARKER.write_text(json.dumps(wanted(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
