"""Show the book's own code in a chapter, highlighted as Python.

A chapter that explains a function prints it from the library (``inspect.getsource``) rather than
pasting a copy that could drift. :func:`show_source` displays it as a Markdown code block, which
the site, JupyterLab and Colab all highlight as Python; the plain-text part of the output is the
source itself, so ``pytest --nbval`` still compares the listing with the stored one.
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

__all__ = ["show_source", "source_lines"]


def source_lines(obj: Any, start: str | None = None, stop: str | None = None) -> str:
    """The dedented source of ``obj``, optionally cut to a slice of it.

    ``start``: the first line kept is the first one that contains this text (default: the first
    line). ``stop``: the last line kept is the last one before the next line that contains this
    text after ``start`` (default: to the end). Raises ``ValueError`` when a marker is not there,
    so a listing cannot silently become empty after a refactor.
    """
    lines = textwrap.dedent(inspect.getsource(obj)).splitlines()
    first, last = 0, len(lines)
    if start is not None:
        hits = [i for i, line in enumerate(lines) if start in line]
        if not hits:
            raise ValueError(f"{start!r} is not in the source of {obj!r}")
        first = hits[0]
    if stop is not None:
        hits = [i for i, line in enumerate(lines) if stop in line and i > first]
        if not hits:
            raise ValueError(
                f"{stop!r} is not in the source of {obj!r} after {start!r}"
            )
        last = hits[0]
    return textwrap.dedent("\n".join(lines[first:last])).rstrip()


def show_source(obj: Any, start: str | None = None, stop: str | None = None) -> None:
    """Display the source of ``obj`` (or the slice :func:`source_lines` cuts) as Python."""
    from IPython.display import display

    code = source_lines(obj, start, stop)
    fence = "````" if "```" in code else "```"
    display(
        {"text/markdown": f"{fence}python\n{code}\n{fence}", "text/plain": code},
        raw=True,
    )
