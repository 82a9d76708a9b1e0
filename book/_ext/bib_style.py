"""Sphinx extension: bibliography entries labelled the way the text cites them (author, year).

sphinxcontrib-bibtex cites in the text as "[Vaswani et al., 2017]" (``bibtex_reference_style:
author_year``), but its default bibliography style labels the entries alphabetically ("[VSP+17]"),
so the label a reader lands on is not the one they clicked. This registers a pybtex formatting
style ``llmbook`` (pybtex's ``unsrt`` with these labels, sorted by author and year); arXiv ids in
``eprint`` fields become links (pybtex's ``format_eprint``).
"""

from __future__ import annotations

from collections import Counter
from string import ascii_lowercase

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle


def _last_name(person) -> str:
    """A person's last name as plain text (``{\\L}ukasz``-style LaTeX decoded)."""
    return Text.from_latex(
        " ".join(person.prelast_names + person.last_names)
    ).render_as("text")


def author_year_label(entry) -> str:
    """``"Shannon, 1948"``, ``"Reimers and Gurevych, 2019"``, ``"Vaswani et al., 2017"``."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_last_name(p) for p in people]
    if not names:
        who = Text.from_latex(entry.fields.get("title", entry.key)).render_as("text")
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabelStyle(BaseLabelStyle):
    """Author-year labels; equal ones get a, b, c after the year (in the sorted order)."""

    def format_labels(self, sorted_entries):
        labels = [author_year_label(entry) for entry in sorted_entries]
        counts, seen = Counter(labels), Counter()
        for text in labels:
            if counts[text] > 1:
                seen[text] += 1
                yield text + ascii_lowercase[seen[text] - 1]
            else:
                yield text


class LlmbookStyle(UnsrtStyle):
    default_label_style = "llmbook_author_year"
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.labels", "llmbook_author_year", AuthorYearLabelStyle)
    register_plugin("pybtex.style.formatting", "llmbook", LlmbookStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
