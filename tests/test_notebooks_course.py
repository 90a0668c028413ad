"""The notebooks as course material: every one states its goals, ends with exercises whose
solutions run (nbval executes them with the rest), and its code fits the book's page."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
WIDTH = 88          # characters of code that fit the rendered book's page without scrolling


def cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_lines_fit_the_page(notebook):
    long = [f"cell {cell['id']}: {len(line)} characters: {line.strip()[:60]}"
            for cell in cells(notebook) if cell["cell_type"] == "code"
            for line in source(cell).splitlines() if len(line) > WIDTH]
    assert not long, "\n".join(long)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_goals_first_and_exercises_with_runnable_solutions_last(notebook):
    all_cells = cells(notebook)
    code = [cell for cell in all_cells if cell["cell_type"] == "code"]
    assert code[0]["metadata"].get("tags") == ["parameters"], "the parameters cell comes first"
    title = source(all_cells[0])
    assert "After this page you can" in title and "**Runtime:**" in title
    assert "CPU_RUNTIME" not in title, "the measured CPU runtime is filled in"
    exercises = [i for i, cell in enumerate(all_cells) if cell["cell_type"] == "markdown"
                 and source(cell).startswith("### Exercise")]
    assert len(exercises) >= 2
    for i in exercises:
        solution = all_cells[i + 1: i + 3]
        assert ":class: dropdown" in source(solution[0]), "the solution text is hidden"
        assert solution[1]["cell_type"] == "code" and \
            "hide-cell" in solution[1]["metadata"].get("tags", []), "the solution code runs"
    assert all(not cell["outputs"] for cell in code), "notebooks are stored without outputs"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_an_implement_it_exercise_with_its_check_a_summary_and_a_self_check(notebook):
    """The student edition (scripts/student.py) turns the marked solution into a stub and
    keeps the check; the self-check's answers are a dropdown, which it strips."""
    all_cells = cells(notebook)
    implement = [i for i, cell in enumerate(all_cells) if cell["cell_type"] == "markdown"
                 and source(cell).startswith("### Exercise")
                 and "(implement it)" in source(cell).splitlines()[0]]
    assert implement, "at least one implement-it exercise"
    for i in implement:
        solution, check = all_cells[i + 2], all_cells[i + 3]
        body = source(solution)
        assert body.count("### BEGIN SOLUTION") == body.count("### END SOLUTION") == 1
        assert body.index("### BEGIN SOLUTION") < body.index("### END SOLUTION")
        assert check["cell_type"] == "code" and not check["metadata"].get("tags")
        assert "checks.check(" in source(check), "an auto-check follows the solution"
    titles = [source(cell).splitlines()[0] for cell in all_cells
              if cell["cell_type"] == "markdown"]
    assert "## Summary" in titles and "## Self-check" in titles
    at = titles.index("## Self-check")
    questions = source([c for c in all_cells if c["cell_type"] == "markdown"][at])
    assert "1. " in questions and "2. " in questions
    answers = [c for c in all_cells if c["cell_type"] == "markdown"][at + 1]
    assert source(answers).startswith("```{admonition} Answers\n:class: dropdown")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_of_hours_have_a_quick_set_for_a_free_colab_session(notebook):
    """A chapter whose T4 estimate is in hours gets `quick = False` in its parameters, and
    its header says what `quick = True` costs."""
    all_cells = cells(notebook)
    runtime = source(all_cells[0]).split("**Runtime:**")[1].split("````")[0]
    parameters = source(next(c for c in all_cells if c["cell_type"] == "code"))
    if re.search(r"about [\d.]+ h\b", runtime):
        assert "\nquick = False" in parameters and "`quick = True`" in runtime
