"""Parameter sweeps: one notebook executed with papermill for every cell of a grid.

A grid file (YAML)::

    notebook: notebooks/09_few_shot_training.ipynb
    output: results/sweeps/shots          # one folder per cell below this
    parameters: {epochs: 2}               # the same for every cell
    grid: {shots: [1, 2, 4], seed: [0, 1, 2]}   # the cartesian product is swept
    resources: {gpus: 1, mem_gb: 32, timeout_min: 240}   # per cell, on SLURM or Ray

Every key of ``parameters`` and ``grid`` must be a variable of the notebook's parameters
cell (a grid entry overrides the same key of ``parameters``). Each cell's folder is named
after its grid values (``shots-1_seed-0``; characters other than letters, digits, ``.+-``
become ``-``) and is checked to lie directly below ``output``; two cells may not share one.
The notebook gets ``out_dir`` = that folder (absolute; the notebook runs in its own folder,
and parameters that are paths are made absolute too, see :mod:`.sweep_inputs`) and must end
by writing ``result.json`` there (:func:`mvfa_lite.outputs.save_result`). A grid has at
most :data:`MAX_CELLS` cells, counted before any is built; ``1e-3`` is a number.

The output folder is the only record of progress. A cell counts as finished when its
``result.json`` exists and the parameters recorded beside it (``cell.json``) equal the
requested ones (and the files and folders it read have the recorded path and fingerprint),
so a sweep killed at any moment resumes where it stopped, on any executor.
A finished cell whose recorded parameters differ (``epochs`` changed in the grid file) is
refused with the differences, or run again with ``force``. The executed notebook is written
to ``.partial.ipynb`` while it runs, renamed to ``notebook.ipynb`` on success or
``failed.ipynb`` on failure (with ``error.txt``); its printed output goes to ``log.txt``. A
failed cell does not stop the others. Cells run here one after another, as SLURM jobs or as
Ray tasks: see :mod:`mvfa_lite.tools.executors`.
"""
from __future__ import annotations

import ast
import hashlib
import itertools
import json
import keyword
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import MVFAError
from ..outputs import RESULT_FILE, write_json
from .executors import CellResult, Resources, make_executor
from .sweep_inputs import absolute, changed_inputs, inputs, writer_lock

RECORD_FILE = "cell.json"       # the parameters a cell was run with
LOG_FILE = "log.txt"            # what its notebook printed
SECTIONS = {"notebook", "output", "parameters", "grid", "resources"}
#: the most cells a grid may have (checked before the cells are built)
MAX_CELLS = 10_000
_UNSET = "(unset)"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as text; read it as the number it means (YAML 1.2)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


@dataclass
class Cell:
    """One point of the grid: a notebook run into its own folder."""
    name: str
    folder: Path            # absolute, directly below the sweep's output folder
    notebook: Path          # absolute
    parameters: dict        # as the grid file gives them; recorded in cell.json
    inject: dict            # what papermill passes: paths absolute, plus out_dir
    kernel: str | None = None
    inputs: dict = field(default_factory=dict)   # key -> path and fingerprint, in cell.json

    @property
    def log(self) -> Path:
        return self.folder / LOG_FILE


@dataclass
class Grid:
    path: Path
    notebook: Path
    output: Path
    parameters: dict
    grid: dict
    resources: Resources = field(default_factory=Resources)

    def runs(self) -> list[tuple[str, dict]]:
        """(folder name, parameters) for every cell of the grid, in a stable order; two
        cells whose names differ only in case or in replaced characters are refused."""
        keys = list(self.grid)
        runs, seen = [], {}
        for values in itertools.product(*(self.grid[k] for k in keys)):
            point = dict(zip(keys, values))
            name = _folder_name(point)
            if name.lower() in seen:
                raise MVFAError(f"grid file {self.path}: cells {seen[name.lower()]} and "
                                f"{point} would share the folder {name!r} (names keep letters, "
                                "digits and '.+-'); make their values differ in those.")
            seen[name.lower()] = point
            runs.append((name, {**self.parameters, **point}))
        return runs

    def cells(self, kernel: str | None = None) -> list[Cell]:
        output = self.output.resolve()
        cells, cache = [], {}
        for name, parameters in self.runs():
            folder = output / name
            if folder.resolve().parent != output:
                raise MVFAError(f"grid file {self.path}: the folder of cell {name!r} would lie "
                                f"outside {output} ({folder} leads to {folder.resolve()}).")
            inject = {**absolute(parameters), "out_dir": str(folder)}
            cells.append(Cell(name, folder, self.notebook.resolve(), parameters, inject, kernel,
                              inputs(inject, cache)))
        return cells


@dataclass
class SweepReport:
    output: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, CellResult] = field(default_factory=dict)


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; every problem is one MVFAError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MVFAError(f"grid file {path} does not exist.")
    try:
        spec = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise MVFAError(f"grid file {path} is not valid YAML{where}: "
                        f"{getattr(error, 'problem', None) or error}; fix that line.") from None
    where = f"grid file {path}"
    if not isinstance(spec, dict):
        raise MVFAError(f"{where} must be a mapping with notebook:, output:, parameters: and "
                        f"grid: (see sweeps/book.yaml), not {_kind(spec)}.")
    missing = sorted({"notebook", "output"} - set(spec))
    if missing:
        raise MVFAError(f"{where} lacks {missing}; see `mvfa-lite sweep --help`.")
    unknown = sorted(set(spec) - SECTIONS, key=str)
    if unknown:
        raise MVFAError(f"{where} has unknown keys {unknown}; use {sorted(SECTIONS)}.")
    for key in ("notebook", "output"):
        if not isinstance(spec[key], str) or not spec[key]:
            raise MVFAError(f"{where}: {key} must be a path, not {_kind(spec[key])}.")
    parameters, grid, resources = (_mapping(spec, key, where)
                                   for key in ("parameters", "grid", "resources"))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise MVFAError(f"{where}: grid.{key} must be a non-empty list of values, e.g. "
                            f"{key}: [1, 2, 4], not {_kind(values)}.")
    count = math.prod(len(values) for values in grid.values())
    if count > MAX_CELLS:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in grid.items())
        raise MVFAError(f"{where}: the grid has {count} cells ({sizes}), more than "
                        f"{MAX_CELLS}; split it into several grid files or shorten the lists.")
    base = path.parent
    notebook = _resolve(base, spec["notebook"])
    if not notebook.is_file():
        raise MVFAError(f"{where}: notebook {notebook} does not exist.")
    _check_parameters(where, notebook, parameters, grid)
    return Grid(path, notebook, _resolve(base, spec["output"]), parameters, grid,
                Resources.from_mapping(resources, where))


def run_sweep(grid_path: str | Path, *, executor="local", dry_run: bool = False,
              kernel: str | None = None, progress: bool = True, force: bool = False,
              resources: dict | None = None, **executor_options) -> SweepReport:
    """Execute every unfinished cell of the grid.

    executor: "local", "slurm", "ray" (options: ``cluster`` for slurm, ``address`` and
    ``init_options`` for ray) or an executor object. resources: values that override the
    grid file's ``resources:``. force: run again finished cells whose recorded parameters
    differ from the requested ones (otherwise refused)."""
    grid = load_grid(grid_path)
    cells = grid.cells(kernel)
    if dry_run:
        todo, report = plan(grid, cells, force)
        for cell in todo:
            print(f"to do: {cell.name}")
        for key, value in sorted({(k, v["path"]) for c in todo for k, v in c.inputs.items()}):
            print(f"reads {key} = {value}")     # relative paths: from the current folder
        print(f"sweep {grid.output}: {len(todo)} to do, {len(report.skipped)} finished")
        return report
    with writer_lock(grid.output.resolve(), f"sweep {grid.path}"):
        return _run(grid, cells, force, executor, progress, resources, executor_options)


def _run(grid: Grid, cells: list[Cell], force, executor, progress, resources,
         executor_options) -> SweepReport:
    todo, report = plan(grid, cells, force)
    if isinstance(executor, str):
        executor = make_executor(executor, grid.resources.updated(**(resources or {})),
                                 progress=progress, **executor_options)
    results = {}
    for result in executor.run(run_cell, todo, grid.output.resolve()) if todo else ():
        results[result.name] = result
        if executor.name != "local" or result.failed:
            print(f"  {result.name}: " + (f"failed: {result.reason} (see {result.log})"
                                          if result.failed else "done"), flush=True)
    for cell in todo:             # grid order, whatever order the executor finished in
        result = results.get(cell.name) or CellResult(cell.name, True, "no result came back")
        if result.failed:
            report.failed[cell.name] = result
        else:
            report.done.append(cell.name)
    print(f"sweep {grid.output}: {len(report.done)} run, {len(report.skipped)} "
          f"already finished, {len(report.failed)} failed")
    return report


def run_cell(cell: Cell, progress: bool = False) -> CellResult:
    """Execute one cell's notebook into its folder. Runs wherever the executor puts it
    (this process, a SLURM job, a Ray worker); returns failures instead of raising them."""
    import papermill
    folder = cell.folder
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT_FILE, "error.txt", "failed.ipynb"):
        (folder / stale).unlink(missing_ok=True)
    write_json(folder / RECORD_FILE, {"notebook": cell.notebook.name,
                                      "parameters": cell.parameters, "inputs": cell.inputs})
    partial = folder / ".partial.ipynb"
    try:
        with open(cell.log, "w") as log:
            papermill.execute_notebook(str(cell.notebook), str(partial),
                                       parameters=cell.inject, kernel_name=cell.kernel,
                                       progress_bar=progress, cwd=str(cell.notebook.parent),
                                       stdout_file=log, stderr_file=log)
        if not (folder / RESULT_FILE).exists():
            raise MVFAError(f"{cell.notebook.name} finished without writing {RESULT_FILE}")
        partial.replace(folder / "notebook.ipynb")
        return CellResult(cell.name)
    except Exception as error:      # reported, never raised: the other cells go on
        if partial.exists():
            partial.replace(folder / "failed.ipynb")
        reason = _reason(error)
        (folder / "error.txt").write_text(reason + "\n")
        log = folder / "failed.ipynb" if (folder / "failed.ipynb").exists() else cell.log
        return CellResult(cell.name, failed=True, reason=reason, log=str(log))


def notebook_parameters(notebook: Path) -> set[str]:
    """The variable names assigned in the notebook's cell tagged ``parameters``."""
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MVFAError(f"notebook {notebook} is not a readable .ipynb file: {error}") from None
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = cell.get("source", "")
            try:
                tree = ast.parse("".join(source) if isinstance(source, list) else source)
            except SyntaxError as error:
                raise MVFAError(f"notebook {notebook}: its parameters cell is not plain Python "
                                f"(line {error.lineno}: {error.msg}).") from None
            targets = [t for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                       for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]
            return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    raise MVFAError(f"notebook {notebook} has no cell tagged 'parameters'; papermill needs "
                    "one to take the sweep's values (Jupyter: View > Cell Toolbar > Tags).")


def _check_parameters(where: str, notebook: Path, parameters: dict, grid: dict) -> None:
    """Keys become assignments in the notebook: only its own parameter names are allowed.
    Values are what YAML gives (papermill writes them as Python literals)."""
    known = notebook_parameters(notebook)
    if "out_dir" not in known:
        raise MVFAError(f"{where}: notebook {notebook} has no out_dir parameter; the sweep "
                        "passes every cell its folder as out_dir.")
    for section, mapping in (("parameters", parameters), ("grid", grid)):
        for key, value in mapping.items():
            if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key):
                raise MVFAError(f"{where}: {section} key {key!r} is not a Python variable name; "
                                f"use one of the notebook's parameters: {_listing(known)}.")
            if key == "out_dir":
                raise MVFAError(f"{where}: {section}.out_dir is set by the sweep (each cell's "
                                "folder); set output: instead.")
            if key not in known:
                raise MVFAError(f"{where}: {section} key {key!r} is not a parameter of "
                                f"{notebook.name}; its parameters are {_listing(known)}.")
            for item in value if section == "grid" else [value]:
                _check_value(item, f"{where}: {section}.{key}")


def _check_value(value, where: str) -> None:
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, list):
        for item in value:
            _check_value(item, where)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise MVFAError(f"{where}: mapping key {key!r} must be text; quote it.")
            _check_value(item, where)
        return
    raise MVFAError(f"{where}: {value!r} is a {type(value).__name__}; values may be text, "
                    "numbers, true/false, null, lists and mappings (quote it to pass text).")


def plan(grid: Grid, cells: list[Cell], force: bool) -> tuple[list[Cell], SweepReport]:
    """The cells still to run; finished cells run with other parameters are refused unless
    ``force``."""
    report, todo, changed = SweepReport(grid.output), [], []
    for cell in cells:
        if not (cell.folder / RESULT_FILE).exists():
            todo.append(cell)
            continue
        difference = _difference(_recorded(cell.folder), cell.parameters) or \
            changed_inputs(cell.folder / RECORD_FILE, cell.inputs)
        if not difference:
            report.skipped.append(cell.name)
            continue
        todo.append(cell)
        changed.append(f"{cell.name} ({difference})")
    if changed and not force:
        shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3
                                          else "")
        raise MVFAError(f"sweep {grid.path}: {len(changed)} finished cells of {grid.output} were "
                        f"run with other parameters: {shown}. Run them again with --force "
                        "(their results are replaced), or set another output folder.")
    return todo, report


def _recorded(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD_FILE).read_text())["parameters"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _difference(recorded: dict | None, requested: dict) -> str:
    """'' when equal (compared as JSON, as recorded), else the differences in words."""
    if recorded is None:
        return f"no readable {RECORD_FILE}"
    changed = [key for key in sorted(set(recorded) | set(requested))
               if json.dumps(recorded.get(key, _UNSET), sort_keys=True)
               != json.dumps(requested.get(key, _UNSET), sort_keys=True)]
    return ", ".join(f"{key}: {recorded.get(key, _UNSET)!r} -> {requested.get(key, _UNSET)!r}"
                     for key in changed)


def _reason(error: Exception) -> str:
    """``ErrorType: message`` (first line); for a notebook error, the notebook's own."""
    kind, message = type(error).__name__, str(error)
    if hasattr(error, "ename"):     # papermill's PapermillExecutionError
        kind, message = error.ename, error.evalue
    first = message.strip().splitlines()[0] if message.strip() else ""
    return f"{kind}: {first}"[:300]


def _folder_name(point: dict) -> str:
    name = "_".join(f"{k}-{_slug(v)}" for k, v in point.items()) or "default"
    if len(name) > 120:             # file systems cap names at 255 bytes
        name = f"{name[:100]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return name


def _slug(value) -> str:
    text = "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def _mapping(spec: dict, key: str, where: str) -> dict:
    value = spec.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MVFAError(f"{where}: {key} must be a mapping (name: value on separate lines, or "
                        f"{{name: value}}), not {_kind(value)}.")
    return value


def _kind(value) -> str:
    if value == []:
        return "an empty list"
    return {list: "a list", dict: "a mapping", type(None): "empty"}.get(type(value), repr(value))


def _listing(names: set[str]) -> str:
    return ", ".join(sorted(names - {"out_dir"}))


def _resolve(base: Path, value: str) -> Path:
    """Paths in a grid file are relative to the current folder, or else to the grid file."""
    path = Path(value)
    if path.is_absolute() or path.exists() or not (base / path).exists():
        return path
    return base / path
