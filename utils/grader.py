"""Exercises that check themselves: one ``check(...)`` for every graded exercise of the book.

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

**Open-ended exercises** (measure and explain, small projects) have no single right answer to
check by code. :func:`open_exercise` registers one with a *rubric*, 3 to 5 concrete criteria a
reader scores their own answer against, and a short worked answer (the points a full answer
makes); its notebook prints the rubric with :func:`rubric` and runs the worked answer's
measurement in a collapsed cell::

    open_exercise("05b.budget_knobs", "Which knob moves perplexity most?", difficulty=3,
                  rubric=["Every run sees the same batches ...", ...],
                  answer="Sweep one knob at a time around a baseline ...")

    rubric("05b.budget_knobs")    # in the notebook: the criteria, as a checklist

``check`` and ``feedback`` on an open-ended exercise raise :class:`OpenEndedExercise`, which
points to the rubric; the exercises page lists both kinds.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

DIFFICULTY = {1: "quick check", 2: "implement and compare", 3: "small project"}
# How an exercise is assessed: by a checker (``check``) or by the reader, against a rubric.
KINDS = ("graded", "rubric")
RUBRIC_SIZE = (3, 5)  # the fewest and the most criteria of an open-ended exercise
# chapter id (the notebook's prefix) -> the number the book gives it
CHAPTERS = {
    "01": "1", "02": "2", "03a": "3a", "03b": "3b", "04a": "4a", "04b": "4b",
    "05a": "5.1", "05b": "5.2", "05c": "5.3", "05d": "5.4", "05e": "5.5", "05f": "5.6",
    "05g": "5.7", "05h": "5.8",
    "06a": "6.1", "06b": "6.2", "06c": "6.3", "07": "7",
}  # fmt: skip


class NotAttempted(Exception):
    """Raised by the reader's placeholder (``raise NotAttempted``): nothing to grade yet."""


class OpenEndedExercise(TypeError):
    """Raised by :func:`check` and :func:`feedback` on an open-ended exercise: it has no grader,
    the reader scores their answer against its rubric instead."""


@dataclasses.dataclass(frozen=True)
class Exercise:
    """One exercise: its id ``"<chapter>.<name>"``, what it asks and how it is assessed.

    A graded exercise (``kind == "graded"``) has a ``checker``, a ``reference`` answer and
    known-``wrong`` ones; an open-ended one (``kind == "rubric"``) has none of them, but a
    ``rubric`` of criteria and an ``answer``, the points a full answer makes.
    """

    id: str
    title: str
    difficulty: int
    checker: Callable[[Any], Iterable[str]] | None
    reference: Any
    wrong: tuple[tuple[Any, str], ...]
    kind: str = "graded"
    rubric: tuple[str, ...] = ()
    answer: str = ""

    @property
    def chapter(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def graded(self) -> bool:
        return self.kind == "graded"


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
    _check_id_and_difficulty(exercise_id, difficulty)
    wrong = tuple(wrong)
    if not wrong:
        raise ValueError(f"{exercise_id}: give at least one known-wrong answer")

    def register(checker):
        _register(Exercise(exercise_id, title, difficulty, checker, reference, wrong))
        return checker

    return register


def open_exercise(
    exercise_id: str,
    title: str,
    *,
    difficulty: int,
    rubric: Iterable[str],
    answer: str,
) -> Exercise:
    """Register the open-ended exercise ``exercise_id``: no grader, a rubric instead.

    ``rubric``: 3 to 5 criteria, each one sentence a reader can tick or not ("reports the
    validation loss of every run in one table"), not a vague virtue ("is thorough").
    ``answer``: the worked answer in a few sentences, the method and the reasoning; the
    notebook's collapsed worked-answer cell runs the measurement itself. Returns the entry.
    """
    _check_id_and_difficulty(exercise_id, difficulty)
    if isinstance(rubric, str):
        raise TypeError(
            f"{exercise_id}: rubric must be a list of criteria, not one str"
        )
    criteria = tuple(rubric)
    low, high = RUBRIC_SIZE
    if not low <= len(criteria) <= high:
        raise ValueError(
            f"{exercise_id}: a rubric has {low} to {high} criteria, got {len(criteria)}"
        )
    for criterion in criteria:
        if not isinstance(criterion, str) or not criterion.strip():
            raise ValueError(f"{exercise_id}: every criterion must be a non-empty str")
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"{exercise_id}: give the worked answer's points as text")
    entry = Exercise(
        exercise_id,
        title,
        difficulty,
        checker=None,
        reference=None,
        wrong=(),
        kind="rubric",
        rubric=criteria,
        answer=" ".join(answer.split()),
    )
    _register(entry)
    return entry


def _check_id_and_difficulty(exercise_id: str, difficulty: int) -> None:
    chapter, _, name = exercise_id.partition(".")
    if chapter not in CHAPTERS or not name.isidentifier():
        raise ValueError(f"exercise id {exercise_id!r} is not '<chapter>.<name>'")
    if difficulty not in DIFFICULTY:
        raise ValueError(
            f"difficulty must be one of {sorted(DIFFICULTY)}, got {difficulty}"
        )


def _register(entry: Exercise) -> None:
    if entry.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {entry.kind!r}")
    if entry.id in _REGISTRY:
        raise ValueError(f"exercise {entry.id!r} is registered twice")
    _REGISTRY[entry.id] = entry


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
    _require_grader(ex)
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
    instead of returning False. An open-ended exercise raises :class:`OpenEndedExercise`.
    """
    ex = get(exercise_id)
    _require_grader(ex)
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


def _require_grader(ex: Exercise) -> None:
    if not ex.graded:
        raise OpenEndedExercise(
            f"{ex.id} ({ex.title}) is open-ended: no grader checks it. Score your answer "
            f"against its rubric, rubric({ex.id!r}) (one point per criterion met), and compare "
            "with the worked answer collapsed under the exercise."
        )


def rubric(exercise_id: str) -> None:
    """Print the rubric of open-ended exercise ``exercise_id`` as a checklist.

    Returns nothing, so that a notebook cell shows the checklist only; the criteria
    themselves are ``get(exercise_id).rubric``.
    """
    ex = get(exercise_id)
    if ex.graded:
        raise TypeError(
            f"{ex.id} ({ex.title}) is graded by code, it has no rubric: run "
            f"check({ex.id!r}, your_answer)"
        )
    lines = [
        f"Rubric of {ex.id}: {ex.title}",
        "Open-ended, no grader: score your answer yourself, one point per criterion met.",
    ]
    for number, criterion in enumerate(ex.rubric, 1):
        lines.append(
            textwrap.fill(
                criterion,
                width=88,
                initial_indent=f"  [ ] {number}. ",
                subsequent_indent=" " * 9,
            )
        )
    lines.append("The worked answer, collapsed below, runs the measurement.")
    print("\n".join(lines))


def index_markdown() -> str:
    """The exercises page of the book: every exercise by chapter, with its difficulty."""
    lines = [
        "# Exercises",
        "",
        "Every chapter ends with exercises, most of them checked by code: write your answer in",
        "the exercise's cell and run the `check(...)` cell under it; it says what is wrong, not",
        "just that something is. Each such exercise has a worked solution, collapsed on this",
        "site and in Colab, which `make test` runs through the same grader. Difficulty:",
        ", ".join(f"{'★' * k} {v}" for k, v in DIFFICULTY.items()) + ".",
        "",
        "The last exercise of several chapters is open-ended, a measurement to make and explain",
        "or a small project: no code can grade the explanation, so it comes with a *rubric*,",
        "criteria to score your answer against (`rubric(...)` prints them), and a worked answer",
        "that runs the measurement at small sizes. The Kind column says which is which: graded",
        "(checked by `check`) or rubric (scored by you).",
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
            "| | Exercise | Difficulty | Kind |",
            "|---|---|---|---|",
        ]
        for number, ex in enumerate(exercises, 1):
            stars = "★" * ex.difficulty
            lines.append(
                f"| {label}.{number} | {ex.title} (`{ex.id}`) | {stars} | {ex.kind} |"
            )
        lines.append("")
    return "\n".join(lines)


def _notebook_order(page: str) -> list[str]:
    """The exercise ids in the order the chapter's exercises notebook checks them (graded
    exercises) or prints their rubric (open-ended ones)."""
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
    ids = re.findall(r'(?:check|rubric)\("([^"]+)"', sources)
    return list(dict.fromkeys(ids))


if __name__ == "__main__":
    # python -m utils.grader runs this file as __main__: use the registry the graders fill
    from utils import grader

    print(grader.index_markdown(), end="")
