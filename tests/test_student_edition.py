"""The student edition (scripts/student.py -> _build/student/): no solution or self-check
answer survives in it, every implement-it exercise is a stub followed by its check, and the
notebooks still run up to their first exercise.

Cost: building all twelve takes about a second. The cells before each notebook's first
exercise are checked to be the teacher's own, which nbval runs in this same suite; two
cheap notebooks (05, 12) are also executed here, cut at the first exercise, plus the first
implement-it stub and its check, which must fail with "not written yet" (about 30 s).
MVFA_STUDENT_RUN=all executes all twelve that way (several minutes, the training included).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
RUN = [p for p in NOTEBOOKS if os.environ.get("MVFA_STUDENT_RUN") == "all"
       or p.stem in ("05_losses", "12_results")]


def _script():
    spec = importlib.util.spec_from_file_location("student", REPO / "scripts" / "student.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def edition(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build") / "student"
    written = _script().build(NOTEBOOKS, out)
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    return out


def _sources(notebook) -> list[str]:
    return [cell.source for cell in notebook.cells]


def _first_exercise(notebook) -> int:
    return next(i for i, cell in enumerate(notebook.cells) if cell.cell_type == "markdown"
                and cell.source.startswith("### Exercise"))


def _teacher_answers(notebook) -> list[str]:
    """Every line of a Solution/Answers dropdown, and of the solution code (the marked part
    of an implement-it cell, the whole of a reveal cell), that appears nowhere else."""
    student = _script()
    answers, kept, after = [], [], False
    for cell in notebook.cells:
        if student.is_answer(cell):
            answers += cell.source.splitlines()[2:]
            after = cell.source.lstrip().startswith("```{admonition} Solution")
            continue
        if after and cell.cell_type == "code" and "hide-cell" in cell.metadata.get("tags", []):
            marked = re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", cell.source,
                                re.S)
            answers += "".join(marked).splitlines() if marked else cell.source.splitlines()
            kept += re.sub(r"### BEGIN SOLUTION\n.*?### END SOLUTION", "", cell.source,
                           flags=re.S).splitlines() if marked else []
        else:
            kept += cell.source.splitlines()
        after = False
    elsewhere = {line.strip() for line in kept}
    return [line.strip() for line in answers
            if len(line.strip()) >= 12 and line.strip() not in elsewhere
            and line.strip() != "```"]


@pytest.mark.parametrize("teacher", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_solution_text_survives(edition, teacher):
    text = "\n".join(_sources(nbformat.read(edition / teacher.name, as_version=4)))
    answers = _teacher_answers(nbformat.read(teacher, as_version=4))
    assert len(answers) >= 10, "the teacher notebook has its solutions"
    lines = {line.strip() for line in text.splitlines()}
    left = [line for line in answers if line in lines]
    assert not left, f"solution text left in the student edition: {left[:5]}"
    for mark in ("{admonition} Solution", "{admonition} Answers", "BEGIN SOLUTION",
                 "END SOLUTION", "hide-cell"):
        assert mark not in text + json.dumps(
            [c.metadata for c in nbformat.read(edition / teacher.name, 4).cells])


@pytest.mark.parametrize("teacher", NOTEBOOKS, ids=lambda p: p.stem)
def test_exercises_are_stubs_and_the_checks_stay(edition, teacher):
    student = nbformat.read(edition / teacher.name, as_version=4)
    stubs = [i for i, cell in enumerate(student.cells)
             if "student-stub" in cell.metadata.get("tags", [])]
    assert stubs, "every notebook has an implement-it exercise"
    for i in stubs:
        assert "raise NotImplementedError(" in student.cells[i].source
        assert student.cells[i - 1].source.startswith("### Exercise")
        assert "checks.check(" in student.cells[i + 1].source, "its check cell follows"
    # what students still get: the questions, the self-check questions, the summary
    teacher_nb = nbformat.read(teacher, as_version=4)
    exercises = [c.source for c in teacher_nb.cells if c.source.startswith("### Exercise")]
    assert exercises == [c.source for c in student.cells
                         if c.source.startswith("### Exercise")]
    assert any(c.source.startswith("## Self-check") for c in student.cells)
    assert any(c.source.startswith("## Summary") for c in student.cells)


@pytest.mark.parametrize("teacher", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_before_the_first_exercise_are_the_teachers(edition, teacher):
    """So nbval's run of the teacher notebook runs them too."""
    teacher_nb = nbformat.read(teacher, as_version=4)
    student = nbformat.read(edition / teacher.name, as_version=4)
    head = [cell.source for cell in teacher_nb.cells[:_first_exercise(teacher_nb)]
            if not _script().is_answer(cell)]             # the self-check's answers go
    student_head = _sources(student)[:_first_exercise(student)]
    assert student_head[0] == head[0] and "Student edition" in student_head[1]
    assert student_head[2:] == head[1:]


@pytest.mark.parametrize("teacher", RUN, ids=lambda p: p.stem)
def test_runs_up_to_the_first_exercise_and_the_stub_asks_for_code(edition, teacher):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    student = nbformat.read(edition / teacher.name, as_version=4)
    stub = next(i for i, cell in enumerate(student.cells)
                if "student-stub" in cell.metadata.get("tags", []))
    cells = student.cells[:_first_exercise(student)]
    student.cells = cells + [student.cells[stub], student.cells[stub + 1]]
    client = NotebookClient(student, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(edition)}})
    with pytest.raises(CellExecutionError) as failure:
        client.execute()
    assert "is not written yet: replace its `raise NotImplementedError`" in str(failure.value)
    ran = [cell for cell in student.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in ran), "every cell up to the check ran"
    assert not any(out.get("output_type") == "error" for cell in ran[:-1]
                   for out in cell.outputs), "only the check fails"
