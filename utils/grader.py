"""Exercises that check themselves: one ``check(...)`` for every exercise of the book.

An exercise lives in a chapter's module ``utils/exercises_<chapter>.py`` (``exercises_03a`` for
chapter 3a), which registers it with :func:`exercise`::

    @exercise("03a.causal_mask", "Build a causal mask", difficulty=1,
              reference=lambda n: torch.ones(n, n).tril().bool(),
              wrong=[(lambda n: torch.ones(n, n).triu().bool(), "position 0 sees position 1")])
    def causal_mask(answer):
        ...  # run ``answer`` on several inputs; yield one sentence per thing that is wrong

A *checker* takes the reader's answer (a function, a number, a tensor...) and yields feedback
sentences that say what is wrong ("your mask lets position 3 see position 5"); yielding nothing
means correct. ``reference`` is an answer that must pass and ``wrong`` pairs known-wrong answers
with a piece of the feedback they must get: ``tests/test_exercises.py`` runs both for every
exercise, so a grader that stops catching a mistake fails the tests.

In a notebook::

    from utils.grader import check
    check("03a.causal_mask", causal_mask)          # prints what is right or wrong
    check("03a.causal_mask", solution, strict=True)  # the hidden solution: raises if wrong

Difficulty: 1 a quick check, 2 implement and compare, 3 a small project.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

DIFFICULTY = {1: "quick check", 2: "implement and compare", 3: "small project"}
# chapter id (the notebook's prefix) -> the number the book gives it
CHAPTERS = {
    "01": "1", "02": "2", "03a": "3a", "03b": "3b", "04a": "4a", "04b": "4b",
    "05a": "5.1", "05b": "5.2", "05c": "5.3", "05d": "5.4", "05e": "5.5", "05f": "5.6",
    "06a": "6.1", "06b": "6.2", "06c": "6.3", "07": "7",
}  # fmt: skip


class NotAttempted(Exception):
    """Raised by the reader's placeholder (``raise NotAttempted``): nothing to grade yet."""


@dataclasses.dataclass(frozen=True)
class Exercise:
    """One exercise: its id ``"<chapter>.<name>"``, what it asks and how it is graded."""

    id: str
    title: str
    difficulty: int
    checker: Callable[[Any], Iterable[str]]
    reference: Any
    wrong: tuple[tuple[Any, str], ...]

    @property
    def chapter(self) -> str:
        return self.id.split(".", 1)[0]


_REGISTRY: dict[str, Exercise] = {}


def exercise(
    exercise_id: str,
    title: str,
    *,
    difficulty: int,
    reference: Any,
    wrong: Iterable[tuple[Any, str]],
) -> Callable[[Callable[[Any], Iterable[str]]], Callable[[Any], Iterable[str]]]:
    """Register the decorated checker as exercise ``exercise_id`` (see the module docstring)."""
    chapter, _, name = exercise_id.partition(".")
    if chapter not in CHAPTERS or not name.isidentifier():
        raise ValueError(f"exercise id {exercise_id!r} is not '<chapter>.<name>'")
    if difficulty not in DIFFICULTY:
        raise ValueError(
            f"difficulty must be one of {sorted(DIFFICULTY)}, got {difficulty}"
        )
    wrong = tuple(wrong)
    if not wrong:
        raise ValueError(f"{exercise_id}: give at least one known-wrong answer")

    def register(checker):
        if exercise_id in _REGISTRY:
            raise ValueError(f"exercise {exercise_id!r} is registered twice")
        _REGISTRY[exercise_id] = Exercise(
            exercise_id, title, difficulty, checker, reference, wrong
        )
        return checker

    return register


def _load(chapter: str) -> None:
    importlib.import_module(f"utils.exercises_{chapter}")


def get(exercise_id: str) -> Exercise:
    """The registered exercise ``exercise_id``; a clear error for an unknown id."""
    chapter = exercise_id.partition(".")[0]
    if chapter not in CHAPTERS:
        raise KeyError(
            f"no chapter {chapter!r}; the chapters are {', '.join(CHAPTERS)}"
        )
    _load(chapter)
    if exercise_id not in _REGISTRY:
        known = ", ".join(sorted(i for i in _REGISTRY if i.startswith(chapter + ".")))
        raise KeyError(f"no exercise {exercise_id!r}; chapter {chapter} has: {known}")
    return _REGISTRY[exercise_id]


def all_exercises() -> list[Exercise]:
    """Every exercise of the book, in chapter order (each chapter's in registration order)."""
    for chapter in CHAPTERS:
        try:
            _load(chapter)
        except ModuleNotFoundError as error:  # a chapter without exercises yet
            if error.name != f"utils.exercises_{chapter}":
                raise
    order = {c: i for i, c in enumerate(CHAPTERS)}
    return sorted(_REGISTRY.values(), key=lambda e: order[e.chapter])


def feedback(exercise_id: str, answer: Any) -> list[str]:
    """What is wrong with ``answer`` (an empty list: correct).

    A placeholder that raises :class:`NotAttempted` (or ``NotImplementedError``) and an answer
    of ``None`` or ``...`` get one sentence saying so; any other exception raised by the
    answer becomes feedback too, so a reader's bug never looks like a grader crash.
    """
    ex = get(exercise_id)
    if answer is None or answer is Ellipsis:
        return ["not attempted yet: replace the placeholder with your answer"]
    try:
        return [str(p) for p in ex.checker(answer)]
    except (NotAttempted, NotImplementedError):
        return ["not attempted yet: replace the placeholder with your answer"]
    except Exception as error:  # the reader's code failed: say how, not a traceback
        return [f"your answer raised {type(error).__name__}: {error}"]


def check(exercise_id: str, answer: Any, *, strict: bool = False) -> bool:
    """Grade ``answer`` for exercise ``exercise_id``, print the verdict, return True if right.

    ``strict=True`` (the hidden solutions, and CI) raises ``AssertionError`` with the feedback
    instead of returning False.
    """
    ex = get(exercise_id)
    problems = feedback(exercise_id, answer)
    if not problems:
        print(f"✓ {ex.id} ({ex.title}): correct.")
        return True
    lines = [f"✗ {ex.id} ({ex.title}):"] + [f"  - {p}" for p in problems]
    message = "\n".join(lines)
    if strict:
        raise AssertionError(message)
    print(message)
    return False


def index_markdown() -> str:
    """The exercises page of the book: every exercise by chapter, with its difficulty."""
    lines = [
        "# Exercises",
        "",
        "Every chapter ends with exercises whose answers are checked by code: write your answer",
        "in the exercise's cell and run the `check(...)` cell under it; it says what is wrong,",
        "not just that something is. Each exercise has a worked solution, collapsed on this site",
        "and in Colab, which `make test` runs through the same grader. Difficulty:",
        ", ".join(f"{'★' * k} {v}" for k, v in DIFFICULTY.items()) + ".",
        "",
        "This page is generated from the graders (`python -m utils.grader > book/exercises.md`);",
        "a test keeps it in step with them.",
        "",
    ]
    by_chapter: dict[str, list[Exercise]] = {}
    for ex in all_exercises():
        by_chapter.setdefault(ex.chapter, []).append(ex)
    for chapter, exercises in by_chapter.items():
        label, page = CHAPTERS[chapter], f"{chapter}_exercises"
        order = _notebook_order(page)
        exercises.sort(key=lambda e: order.index(e.id) if e.id in order else len(order))
        lines += [
            f"## Chapter {label}",
            "",
            f"On the page {{doc}}`../notebooks/exercises/{page}`:",
            "",
            "| | Exercise | Difficulty |",
            "|---|---|---|",
        ]
        for number, ex in enumerate(exercises, 1):
            stars = "★" * ex.difficulty
            lines.append(f"| {label}.{number} | {ex.title} (`{ex.id}`) | {stars} |")
        lines.append("")
    return "\n".join(lines)


def _notebook_order(page: str) -> list[str]:
    """The exercise ids in the order the chapter's exercises notebook checks them."""
    path = (
        Path(__file__).resolve().parents[1]
        / "notebooks"
        / "exercises"
        / f"{page}.ipynb"
    )
    if not path.exists():
        return []
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    sources = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    ids = re.findall(r'check\("([^"]+)"', sources)
    return list(dict.fromkeys(ids))


if __name__ == "__main__":
    # python -m utils.grader runs this file as __main__: use the registry the graders fill
    from utils import grader

    print(grader.index_markdown(), end="")
