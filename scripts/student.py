"""Build the student edition of the notebooks: solutions stripped, auto-checks kept.

    python scripts/student.py                    # notebooks/*.ipynb -> _build/student/
    python scripts/student.py --out DIR NB...    # chosen notebooks, another folder

The teacher notebooks (notebooks/) are the only source. The tool is nbconvert (Jupyter's
own converter): its TagRemovePreprocessor drops the cells tagged ``solution``, and one small
preprocessor of ours first tags, in memory only, what the book already marks as answers:

* a markdown cell that opens a dropdown admonition titled "Solution" or "Answers"
  (`{admonition} Solution` + `:class: dropdown`: the book hides it behind a click);
* the ``hide-cell`` code cell right after an exercise's Solution (the solution code);
* any cell a teacher tags ``solution`` by hand.

A solution code cell of an implement-it exercise is kept as a stub instead: the lines between
``### BEGIN SOLUTION`` and ``### END SOLUTION`` (nbgrader's markers, so the same notebooks
also work with nbgrader's generate_assignment) become ``raise NotImplementedError(...)``.
The check cells after it stay, so a student runs them against the package.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
from nbconvert.exporters import NotebookExporter
from nbconvert.preprocessors import Preprocessor, TagRemovePreprocessor
from traitlets.config import Config

ROOT = Path(__file__).resolve().parent.parent
TAG = "solution"
ANSWER = re.compile(r"\A\s*```\{admonition\}\s*(Solution|Answers?)\b[^\n]*\n:class: dropdown")
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
EDITION_NOTE = ("*Student edition: the solutions and the self-check answers are removed. "
                "In each implement-it exercise replace `raise NotImplementedError` with your "
                "code, then run the check cell below it.*")


def is_answer(cell) -> bool:
    """A markdown cell holding a Solution or the Answers of a self-check (a dropdown)."""
    return cell.cell_type == "markdown" and bool(ANSWER.match(cell.source))


def stub(source: str, label: str) -> str:
    """Replace every BEGIN/END SOLUTION block by a raise, at the block's indentation."""
    lines, out, inside = source.splitlines(), [], False
    for line in lines:
        marker = line.strip()
        if marker == BEGIN:
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f'{indent}raise NotImplementedError("{label}: write this part")')
        elif marker == END:
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{label}: {BEGIN} without {END}")
    return "\n".join(out)


class MarkSolutions(Preprocessor):
    """Tag the answers ``solution`` (removed after) and turn marked solution code to stubs."""

    def preprocess(self, nb, resources):
        exercise, after_solution = "", False
        for cell in nb.cells:
            tags = cell.metadata.setdefault("tags", [])
            if cell.cell_type == "markdown" and cell.source.startswith("### Exercise"):
                exercise = " ".join(cell.source.split()[1:3]).rstrip(":")   # "Exercise 2"
            if is_answer(cell):
                tags.append(TAG)
                after_solution = cell.source.lstrip().startswith("```{admonition} Solution")
                continue
            if after_solution and cell.cell_type == "code" and "hide-cell" in tags:
                if BEGIN in cell.source:
                    cell.source = stub(cell.source, exercise or "exercise")
                    tags.remove("hide-cell")
                    tags.append("student-stub")
                elif TAG not in tags:
                    tags.append(TAG)
            after_solution = False
            if not tags:
                del cell.metadata["tags"]
        nb.cells.insert(1, nbformat.v4.new_markdown_cell(EDITION_NOTE, id="student0"))
        return nb, resources


def exporter() -> NotebookExporter:
    config = Config()
    config.TagRemovePreprocessor.remove_cell_tags = {TAG}
    config.TagRemovePreprocessor.enabled = True
    nb_exporter = NotebookExporter(config=config)
    nb_exporter.register_preprocessor(MarkSolutions(), enabled=True)
    nb_exporter.register_preprocessor(TagRemovePreprocessor(config=config), enabled=True)
    return nb_exporter


def student_edition(notebook: Path):
    """The student edition of one notebook, as a NotebookNode."""
    nb = nbformat.read(notebook, as_version=4)
    stripped, _ = exporter().from_notebook_node(nb)
    return nbformat.reads(stripped, as_version=4)


def build(notebooks: list[Path], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for notebook in notebooks:
        target = out / notebook.name
        nbformat.write(student_edition(notebook), target)
        written.append(target)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "student")
    args = parser.parse_args()
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    written = build(notebooks, args.out)
    print(f"student edition: {len(written)} notebooks in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
