"""The notebooks as course material: every one states its goals, ends with exercises whose
solutions run (nbval executes them with the rest), and its code fits the book's page."""
from __future__ import annotations

import json
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
