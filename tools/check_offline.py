"""Fail if any page of the built site loads a script, stylesheet, font, image or frame from another host.

Checks every ``.html`` file under the site folder (default ``_build/html``): ``<script src>``,
``<link href>`` for stylesheets/preloads/icons, ``<img src>``, ``<iframe src>``, ``<source src>``,
ES-module ``import ... from "https://..."`` in inline module scripts, and ``url(https://...)`` /
``@import`` in the site's CSS files. Plain ``<a href>`` links to other sites are fine: they load
nothing until a reader clicks.

Usage: ``python tools/check_offline.py [site_dir]``. Exit status 1 lists every offending reference.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

REMOTE = re.compile(r"^(https?:)?//", re.I)
MODULE_IMPORT = re.compile(r"""\bimport\b[^;]*?["']((?:https?:)?//[^"']+)["']""")
CSS_REMOTE = re.compile(
    r"""(?:url\(\s*["']?|@import\s+["'])((?:https?:)?//[^"')\s]+)""", re.I
)
LOADING_LINK_RELS = {
    "stylesheet",
    "preload",
    "modulepreload",
    "icon",
    "shortcut",
    "prefetch",
}


class _Finder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._in_module_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "audio", "video", "embed"):
            src = a.get("src") or ""
            if REMOTE.match(src):
                self.found.append(f"<{tag} src={src}>")
        if tag == "link":
            rels = set((a.get("rel") or "").lower().split())
            href = a.get("href") or ""
            if rels & LOADING_LINK_RELS and REMOTE.match(href):
                self.found.append(f"<link rel={a.get('rel')} href={href}>")
        self._in_module_script = tag == "script" and a.get("type") == "module"

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_module_script = False

    def handle_data(self, data):
        if self._in_module_script:
            self.found += [f"module import {u}" for u in MODULE_IMPORT.findall(data)]


def remote_loads(site: Path) -> dict[str, list[str]]:
    """Map each offending file (relative to ``site``) to the remote resources it loads."""
    report: dict[str, list[str]] = {}
    for page in sorted(site.rglob("*.html")):
        finder = _Finder()
        finder.feed(page.read_text(encoding="utf-8", errors="replace"))
        if finder.found:
            report[str(page.relative_to(site))] = finder.found
    for css in sorted(site.rglob("*.css")):
        hits = CSS_REMOTE.findall(css.read_text(encoding="utf-8", errors="replace"))
        if hits:
            report[str(css.relative_to(site))] = [f"css {u}" for u in hits]
    return report


def main(argv: list[str]) -> int:
    site = Path(argv[0] if argv else "_build/html")
    pages = list(site.rglob("*.html"))
    if not pages:
        print(f"check_offline: no HTML pages under {site}: build the site first")
        return 1
    report = remote_loads(site)
    if report:
        print(f"check_offline: {len(report)} file(s) load resources from other hosts:")
        for name, items in report.items():
            for item in items:
                print(f"  {name}: {item}")
        return 1
    print(f"check_offline: {len(pages)} pages, nothing loaded from another host")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
