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
    MARKER.write_text(json.dumps(wanted(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
