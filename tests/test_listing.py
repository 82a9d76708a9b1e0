"""utils.listing: library code shown in a chapter, highlighted, cut by markers."""

import pytest

from utils import listing


def _sample(x):
    """Doc."""
    y = x + 1
    z = y * 2
    return z


def test_source_lines_cuts_between_markers():
    assert listing.source_lines(_sample, "y = x", "return") == "y = x + 1\nz = y * 2"
    assert listing.source_lines(_sample).startswith("def _sample(x):")


def test_a_missing_marker_is_an_error():
    with pytest.raises(ValueError, match="not in the source"):
        listing.source_lines(_sample, "no such line")
    with pytest.raises(ValueError, match="after"):
        listing.source_lines(_sample, "y = x", "no such line")


def test_show_source_displays_markdown_and_plain_text(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw: shown.append(obj))
    listing.show_source(_sample, "y = x")
    (bundle,) = shown
    assert bundle["text/markdown"].startswith("```python\ny = x + 1")
    assert bundle["text/markdown"].endswith("\n```")
    assert bundle["text/plain"] == "y = x + 1\nz = y * 2\nreturn z"
