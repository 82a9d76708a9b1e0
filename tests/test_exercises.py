"""Every exercise's grader: its reference answer passes, each known-wrong answer fails with
the feedback it should get, and the exercises page and notebooks are in step with the graders.
Open-ended exercises: a rubric of concrete criteria, no grader (``check`` says so), a hidden
worked answer in the notebook and a discussion that quotes no measured number."""

import contextlib
import io
import json
import re
from pathlib import Path

import nbformat
import pytest

from utils import grader, provenance

ROOT = Path(__file__).resolve().parents[1]
ALL_EXERCISES = grader.all_exercises()
EXERCISES = [ex for ex in ALL_EXERCISES if ex.graded]
IDS = [ex.id for ex in EXERCISES]
OPEN = [ex for ex in ALL_EXERCISES if not ex.graded]
OPEN_IDS = [ex.id for ex in OPEN]
# the chapters that have an open-ended exercise (issue 22: measure-and-explain, small projects)
OPEN_CHAPTERS = {"01", "02", "03b", "04b", "05b", "05d", "06b", "07"}


def test_there_are_exercises():
    assert len(EXERCISES) >= 3


@pytest.mark.parametrize("exercise_id", IDS)
def test_reference_answer_passes(exercise_id, capsys):
    ex = grader.get(exercise_id)
    assert grader.feedback(exercise_id, ex.reference) == []
    assert grader.check(exercise_id, ex.reference, strict=True)
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("exercise_id", IDS)
def test_wrong_answers_get_targeted_feedback(exercise_id):
    ex = grader.get(exercise_id)
    for answer, expected in ex.wrong:
        problems = grader.feedback(exercise_id, answer)
        assert problems, f"{exercise_id}: a wrong answer passed (expected {expected!r})"
        assert any(expected in p for p in problems), (exercise_id, expected, problems)
        with pytest.raises(AssertionError, match="✗"):
            grader.check(exercise_id, answer, strict=True)


def test_placeholder_and_crashing_answers_are_feedback_not_errors(capsys):
    ex_id = IDS[0]

    def placeholder(*args):
        raise grader.NotAttempted

    def crashes(*args):
        raise ZeroDivisionError("division by zero")

    assert grader.check(ex_id, placeholder) is False
    assert "not attempted" in capsys.readouterr().out
    assert grader.check(ex_id, None) is False
    assert "raised ZeroDivisionError" in grader.feedback(ex_id, crashes)[0]


def test_unknown_ids_are_clear_errors():
    with pytest.raises(KeyError, match="no chapter"):
        grader.get("99.x")
    with pytest.raises(KeyError, match="no exercise"):
        grader.get("03a.no_such_exercise")
    with pytest.raises(ValueError, match="chapter"):
        grader.exercise("3.x", "t", difficulty=1, reference=1, wrong=[(0, "")])
    with pytest.raises(ValueError, match="known-wrong"):
        grader.exercise("03a.y", "t", difficulty=1, reference=1, wrong=[])


def test_exercises_page_is_generated_from_the_graders():
    page = (ROOT / "book" / "exercises.md").read_text()
    assert page == grader.index_markdown(), (
        "regenerate: python -m utils.grader > book/exercises.md"
    )


def _notebook_sources(chapter):
    path = ROOT / "notebooks" / "exercises" / f"{chapter}_exercises.ipynb"
    assert path.exists(), f"chapter {chapter} has graders but no {path.name}"
    return json.loads(path.read_text())["cells"]


@pytest.mark.parametrize("chapter", sorted({ex.chapter for ex in EXERCISES}))
def test_every_exercise_is_in_its_notebook_with_a_hidden_solution(chapter):
    cells = _notebook_sources(chapter)
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    for ex in (e for e in EXERCISES if e.chapter == chapter):
        checks = [s for s in code if f'check("{ex.id}"' in s]
        readers = [s for s in checks if "strict=True" not in s]
        solutions = [
            c
            for c in cells
            if c["cell_type"] == "code"
            and f'check("{ex.id}"' in "".join(c["source"])
            and "strict=True" in "".join(c["source"])
        ]
        assert readers, f"{ex.id}: no check cell for the reader's answer"
        assert len(solutions) == 1, f"{ex.id}: expected one solution cell"
        meta = solutions[0]["metadata"]
        assert "hide-input" in meta.get("tags", []), (
            f"{ex.id}: solution not collapsed on the site"
        )
        assert meta.get("cellView") == "form", (
            f"{ex.id}: solution not collapsed in Colab"
        )
        outputs = "".join(
            "".join(o.get("text", "")) for o in solutions[0].get("outputs", [])
        )
        assert "✓" in outputs, (
            f"{ex.id}: the stored solution output does not show it passing"
        )


def test_every_exercises_notebook_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    for path in sorted((ROOT / "notebooks" / "exercises").glob("*.ipynb")):
        assert f"notebooks/exercises/{path.stem}" in toc, path.name


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "notebooks" / "exercises").glob("*.ipynb")),
    ids=lambda p: p.stem,
)
def test_exercises_notebooks_are_fresh_and_error_free(path):
    nb = nbformat.read(path, as_version=4)
    problems = provenance.staleness(nb)
    assert not problems, (
        f"{path.name}: stale: {problems}; make execute NOTEBOOKS={path}"
    )
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None, f"{path.name}: a cell was not run"
            assert all(o.output_type != "error" for o in cell.outputs), path.name


# --- open-ended exercises --------------------------------------------------------------------


def test_open_ended_exercises_are_where_the_issue_asks():
    assert {ex.chapter for ex in OPEN} == OPEN_CHAPTERS
    assert all(ex.kind == "rubric" for ex in OPEN)


@pytest.mark.parametrize("exercise_id", OPEN_IDS)
def test_open_ended_exercise_has_a_rubric_and_a_worked_answer(exercise_id):
    ex = grader.get(exercise_id)
    assert 3 <= len(ex.rubric) <= 5, f"{exercise_id}: {len(ex.rubric)} criteria"
    for criterion in ex.rubric:
        # a criterion is a sentence a reader can tick: long enough to say what to check
        assert len(criterion.split()) >= 8 and criterion.endswith("."), criterion
    assert len(ex.answer.split()) >= 40, (
        f"{exercise_id}: the worked answer is too short"
    )
    assert ex.checker is None and ex.reference is None and ex.wrong == ()


@pytest.mark.parametrize("exercise_id", OPEN_IDS)
def test_check_on_an_open_ended_exercise_points_to_the_rubric(exercise_id, capsys):
    for call in (grader.check, grader.feedback):
        with pytest.raises(grader.OpenEndedExercise, match="open-ended") as raised:
            call(exercise_id, "my answer")
        assert f"rubric({exercise_id!r})" in str(raised.value)
    with pytest.raises(grader.OpenEndedExercise):
        grader.check(exercise_id, None, strict=True)
    # rubric() returns nothing, so that a notebook cell shows the checklist only
    assert grader.rubric(exercise_id) is None
    printed = capsys.readouterr().out
    criteria = grader.get(exercise_id).rubric
    assert printed.count("[ ]") == len(criteria) and "no grader" in printed


def test_rubric_of_a_graded_exercise_is_a_clear_error():
    with pytest.raises(TypeError, match="graded by code"):
        grader.rubric(IDS[0])


def test_open_exercise_validates_its_arguments():
    good = dict(difficulty=3, rubric=["a", "b", "c"], answer="the points")
    with pytest.raises(ValueError, match="3 to 5 criteria"):
        grader.open_exercise("05b.x_two", "t", **{**good, "rubric": ["a", "b"]})
    with pytest.raises(ValueError, match="3 to 5 criteria"):
        grader.open_exercise("05b.x_six", "t", **{**good, "rubric": ["a"] * 6})
    with pytest.raises(TypeError, match="list of criteria"):
        grader.open_exercise("05b.x_str", "t", **{**good, "rubric": "abc"})
    with pytest.raises(ValueError, match="non-empty"):
        grader.open_exercise("05b.x_empty", "t", **{**good, "rubric": ["a", "b", " "]})
    with pytest.raises(ValueError, match="worked answer"):
        grader.open_exercise("05b.x_answer", "t", **{**good, "answer": ""})
    with pytest.raises(ValueError, match="chapter"):
        grader.open_exercise("5.x", "t", **good)
    with pytest.raises(ValueError, match="registered twice"):
        grader.open_exercise(OPEN_IDS[0], "t", **good)


def test_exercises_page_lists_the_open_ended_ones_as_rubric():
    page = grader.index_markdown()
    for ex in ALL_EXERCISES:
        rows = [line for line in page.splitlines() if f"(`{ex.id}`)" in line]
        assert len(rows) == 1, ex.id
        assert rows[0].rstrip(" |").endswith(ex.kind), rows[0]


# A measured number in prose: a decimal or a percentage. Settings ("n = 5", "width 4,096")
# and section numbers ("section 7.1", "5.2.4") are fine.
MEASURED_NUMBER = re.compile(
    r"(?<![Ss]ection )(?<![\d.])\d+\.\d+(?![\d.])|\d\s?%|per ?cent"
)


@pytest.mark.parametrize("exercise_id", OPEN_IDS)
def test_open_ended_exercise_is_in_its_notebook_with_a_hidden_worked_answer(
    exercise_id,
):
    ex = grader.get(exercise_id)
    cells = _notebook_sources(ex.chapter)
    sources = ["".join(c["source"]) for c in cells]
    assert not any(f'check("{ex.id}"' in s for s in sources), (
        f"{ex.id}: an open-ended exercise has no check cell"
    )
    at = [i for i, s in enumerate(sources) if s.strip() == f'rubric("{ex.id}")']
    assert len(at) == 1, f"{ex.id}: expected one rubric({ex.id!r}) cell"
    heading = max(i for i in range(at[0]) if sources[i].startswith("## Exercise"))
    assert ex.title in sources[heading] and "open-ended" in sources[heading]
    assert cells[heading + 1]["cell_type"] == "code", "no cell for the reader's answer"
    rubric_out = "".join("".join(o.get("text", "")) for o in cells[at[0]]["outputs"])
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        grader.rubric(ex.id)
    assert rubric_out == printed.getvalue(), f"{ex.id}: stored rubric output is stale"

    worked, discussion = cells[at[0] + 1], cells[at[0] + 2]
    assert worked["cell_type"] == "code"
    assert sources[at[0] + 1].startswith("# @title Worked answer (click to show)")
    meta = worked["metadata"]
    assert "hide-input" in meta.get("tags", []), f"{ex.id}: worked answer shown on site"
    assert meta.get("cellView") == "form", f"{ex.id}: worked answer shown in Colab"
    assert meta.get("jupyter", {}).get("source_hidden") is True
    printed = "".join("".join(o.get("text", "")) for o in worked.get("outputs", []))
    assert re.search(r"\d", printed), (
        f"{ex.id}: the worked answer prints no measurement"
    )
    assert all(o["output_type"] != "error" for o in worked.get("outputs", []))

    assert discussion["cell_type"] == "markdown"
    text = sources[at[0] + 2]
    assert text.startswith("**Worked answer.**"), (
        f"{ex.id}: no worked-answer discussion"
    )
    # the discussion describes what the cell printed; it never types in a measured number
    found = MEASURED_NUMBER.findall(text)
    assert not found, f"{ex.id}: measured numbers in the discussion: {found}"
