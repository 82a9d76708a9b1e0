"""Every exercise's grader: its reference answer passes, each known-wrong answer fails with
the feedback it should get, and the exercises page and notebooks are in step with the graders."""

import json
from pathlib import Path

import nbformat
import pytest

from utils import grader, provenance

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = grader.all_exercises()
IDS = [ex.id for ex in EXERCISES]


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
