"""Small papermill notebooks for the sweep tests: a parameters cell, then one body cell."""
from __future__ import annotations

from pathlib import Path

import nbformat


def write_notebook(path: Path, parameters: str, body: str) -> Path:
    """A two-cell notebook at ``path`` (the first cell tagged "parameters"), python3 kernel."""
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_code_cell(body)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, path)
    return path
