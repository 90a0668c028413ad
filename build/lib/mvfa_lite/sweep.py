"""Parameter sweeps: one notebook executed with papermill for every point of a grid.

A grid file (YAML)::

    notebook: notebooks/09_few_shot_training.ipynb
    output: results/sweeps/shots          # one folder per run below this
    parameters: {epochs: 2}               # the same for every run
    grid: {shots: [1, 2, 4], seed: [0, 1, 2]}   # the cartesian product is swept

Each run gets ``out_dir`` = its folder (absolute; the notebook runs in its own folder, and
string parameters naming existing paths are made absolute too); the notebook must end by writing ``result.json``
there (:func:`mvfa_lite.results.save_result`). A run counts as finished only when that file
exists, so a sweep killed at any moment resumes where it stopped: finished runs are skipped,
the interrupted one starts again. The executed notebook is written to ``.partial.ipynb``
while it runs and renamed to ``notebook.ipynb`` on success or ``failed.ipynb`` on failure;
a failed run does not stop the others.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import MVFAError
from .results import RESULT_FILE


@dataclass
class Grid:
    notebook: Path
    output: Path
    parameters: dict
    grid: dict

    def runs(self) -> list[tuple[str, dict]]:
        """(run name, parameters) for every point of the grid, in a stable order."""
        keys = list(self.grid)
        points = itertools.product(*(self.grid[k] for k in keys)) if keys else [()]
        runs = []
        for values in points:
            point = dict(zip(keys, values))
            name = "_".join(f"{k}-{_slug(v)}" for k, v in point.items()) or "default"
            runs.append((name, {**self.parameters, **point}))
        return runs


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    if not path.is_file():
        raise MVFAError(f"grid file {path} does not exist.")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise MVFAError(f"grid file {path} is not valid YAML: {error}") from None
    missing = {"notebook", "output"} - set(spec)
    if missing:
        raise MVFAError(f"grid file {path} lacks {sorted(missing)}; see `mvfa-lite sweep --help`.")
    unknown = set(spec) - {"notebook", "output", "parameters", "grid"}
    if unknown:
        raise MVFAError(f"grid file {path} has unknown keys {sorted(unknown)}.")
    grid = spec.get("grid") or {}
    bad = [k for k, v in grid.items() if not isinstance(v, list) or not v]
    if bad:
        raise MVFAError(f"grid file {path}: grid entries {bad} must be non-empty lists.")
    base = path.parent
    notebook = _resolve(base, spec["notebook"])
    if not notebook.is_file():
        raise MVFAError(f"grid file {path}: notebook {notebook} does not exist.")
    return Grid(notebook, _resolve(base, spec["output"]), spec.get("parameters") or {}, grid)


def run_sweep(grid_path: str | Path, *, dry_run: bool = False, kernel: str | None = None,
              progress: bool = True) -> dict[str, list[str]]:
    """Execute every unfinished run of the grid. Returns the run names by outcome."""
    import papermill
    grid = load_grid(grid_path)
    outcome = {"done": [], "skipped": [], "failed": []}
    runs = grid.runs()
    for i, (name, parameters) in enumerate(runs, 1):
        folder = grid.output / name
        if (folder / RESULT_FILE).exists():
            outcome["skipped"].append(name)
            continue
        print(f"[{i}/{len(runs)}] {name}" + (" (dry run)" if dry_run else ""), flush=True)
        if dry_run:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / ".partial.ipynb"
        try:
            papermill.execute_notebook(str(grid.notebook), str(partial),
                                       parameters={**_absolute(parameters),
                                                   "out_dir": str(folder.resolve())},
                                       kernel_name=kernel, progress_bar=progress,
                                       cwd=str(grid.notebook.parent))
            if not (folder / RESULT_FILE).exists():
                raise MVFAError(f"{grid.notebook.name} finished without writing {RESULT_FILE}")
            partial.replace(folder / "notebook.ipynb")
            outcome["done"].append(name)
        except Exception as error:        # keep going: one broken run must not lose the rest
            if partial.exists():
                partial.replace(folder / "failed.ipynb")
            (folder / "error.txt").write_text(f"{type(error).__name__}: {error}\n")
            print(f"  failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
                  f" (see {folder / 'failed.ipynb'})", flush=True)
            outcome["failed"].append(name)
    print(f"sweep {grid.output}: {len(outcome['done'])} run, {len(outcome['skipped'])} "
          f"already finished, {len(outcome['failed'])} failed")
    return outcome


def _absolute(parameters: dict) -> dict:
    """The notebook runs in its own folder: parameters naming an existing file or folder
    (relative to where the sweep was started) are passed as absolute paths."""
    return {key: str(Path(value).resolve()) if isinstance(value, str) and value
            and Path(value).exists() else value for key, value in parameters.items()}


def _resolve(base: Path, value: str) -> Path:
    """Paths in a grid file are relative to the current folder, or else to the grid file."""
    path = Path(value)
    if path.is_absolute() or path.exists() or not (base / path).exists():
        return path
    return base / path


def _slug(value) -> str:
    text = "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"
