"""Sweeps: every grid cell runs once, failures are kept aside, a rerun resumes; grid files
cannot inject code, escape the output folder, collide or reuse stale results."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from notebook_cases import write_notebook

from mvfa_lite.data import catalogue
from mvfa_lite.errors import DataError, MVFAError
from mvfa_lite.outputs import save_result, write_json
from mvfa_lite.teaching.results import collect_results
from mvfa_lite.tools.cli import main
from mvfa_lite.tools.sweep import load_grid, notebook_parameters, run_sweep

REPO = Path(__file__).resolve().parent.parent


def _notebook(path, parameters="x = 0\ncrash_flag = ''\nname = ''\nout_dir = '.'"):
    """Parameters, then a result (or a crash while `crash_flag` exists and x == 2)."""
    return write_notebook(path, parameters, (   # plain json: no torch import, a fast kernel
        "import json, pathlib\n"
        "print('cell x =', x)\n"
        "if crash_flag and pathlib.Path(crash_flag).exists() and x == 2:\n"
        "    raise RuntimeError('simulated crash')\n"
        "result = {'metrics': {'value': x * 10}, 'parameters': {'x': x, 'name': name}}\n"
        "pathlib.Path(out_dir, 'result.json').write_text(json.dumps(result))"))


def _grid(tmp_path, text, notebook=True):
    if notebook:
        _notebook(tmp_path / "nb.ipynb")
    path = tmp_path / "grid.yaml"
    path.write_text(f"notebook: {tmp_path / 'nb.ipynb'}\noutput: {tmp_path / 'out'}\n" + text)
    return path


def test_sweep_runs_skips_and_resumes(tmp_path, capsys):
    flag = tmp_path / "crash-now"
    flag.touch()
    grid = _grid(tmp_path, f"parameters: {{crash_flag: {flag}}}\ngrid: {{x: [1, 2, 3]}}\n")
    first = run_sweep(grid, progress=False)
    assert (first.done, first.skipped, list(first.failed)) == (["x-1", "x-3"], [], ["x-2"])
    failed = tmp_path / "out" / "x-2"
    assert first.failed["x-2"].reason == "RuntimeError: simulated crash"
    assert first.failed["x-2"].log == str(failed / "failed.ipynb")
    assert "failed: RuntimeError: simulated crash (see " in capsys.readouterr().out
    assert (failed / "error.txt").read_text() == "RuntimeError: simulated crash\n"
    assert not (failed / "result.json").exists()
    assert "cell x = 1" in (tmp_path / "out" / "x-1" / "log.txt").read_text()
    finished = (tmp_path / "out" / "x-1" / "result.json").stat().st_mtime_ns
    flag.unlink()                                   # the cause of the crash is gone: resume
    second = run_sweep(grid, progress=False)
    assert (second.done, second.skipped, second.failed) == (["x-2"], ["x-1", "x-3"], {})
    assert (failed / "notebook.ipynb").exists()
    assert not (failed / "failed.ipynb").exists() and not (failed / "error.txt").exists()
    assert (tmp_path / "out" / "x-1" / "result.json").stat().st_mtime_ns == finished
    rows = collect_results(tmp_path / "out")
    assert sorted(row["metrics.value"] for row in rows) == [10, 20, 30]
    assert {row["run"] for row in rows} == {"x-1", "x-2", "x-3"}


def test_changed_parameters_are_not_reused(tmp_path, capsys):
    grid = _grid(tmp_path, "parameters: {name: first}\ngrid: {x: [1, 2]}\n")
    assert run_sweep(grid, progress=False).done == ["x-1", "x-2"]
    record = json.loads((tmp_path / "out" / "x-1" / "cell.json").read_text())
    assert record["parameters"] == {"name": "first", "x": 1}
    grid.write_text(grid.read_text().replace("first", "second"))
    with pytest.raises(MVFAError, match=r"2 finished cells .* other parameters: x-1 \(name: "
                                        r"'first' -> 'second'\).*--force"):
        run_sweep(grid, progress=False)
    assert json.loads((tmp_path / "out" / "x-1" / "result.json").read_text())[
        "parameters"]["name"] == "first"            # refused: nothing replaced
    assert main(["sweep", str(grid)]) == 2
    assert "--force" in capsys.readouterr().err
    forced = run_sweep(grid, progress=False, force=True)
    assert forced.done == ["x-1", "x-2"]
    assert json.loads((tmp_path / "out" / "x-1" / "result.json").read_text())[
        "parameters"]["name"] == "second"
    assert run_sweep(grid, progress=False).skipped == ["x-1", "x-2"]
    (tmp_path / "out" / "x-2" / "cell.json").unlink()     # a result of unknown parameters
    with pytest.raises(MVFAError, match=r"x-2 \(no readable cell.json\)"):
        run_sweep(grid, progress=False)


def test_keys_cannot_inject_code(tmp_path):
    marker = tmp_path / "PWNED"
    attack = f'x = __import__("os").system("touch {marker}"); y'
    grid = _grid(tmp_path, f"grid:\n  '{attack}': [1]\n")
    with pytest.raises(MVFAError, match="grid key .* is not a Python variable name; use one of "
                                        "the notebook's parameters: crash_flag, name, x"):
        run_sweep(grid, progress=False)
    grid = _grid(tmp_path, f"parameters:\n  '{attack}': 1\n")
    with pytest.raises(MVFAError, match="parameters key .* is not a Python variable name"):
        run_sweep(grid, progress=False)
    grid = _grid(tmp_path, "grid:\n  ../../../escaped: [1]\n")
    with pytest.raises(MVFAError, match="grid key '../../../escaped' is not a Python variable"):
        run_sweep(grid, progress=False)
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert not (tmp_path.parent.parent / "escaped").exists()
    grid = _grid(tmp_path, "grid: {epochs: [1]}\n")
    with pytest.raises(MVFAError, match="grid key 'epochs' is not a parameter of nb.ipynb; its "
                                        "parameters are crash_flag, name, x"):
        load_grid(grid)
    grid = _grid(tmp_path, "parameters: {out_dir: elsewhere}\n")
    with pytest.raises(MVFAError, match="parameters.out_dir is set by the sweep"):
        load_grid(grid)


def test_values_reach_the_notebook_as_text(tmp_path):
    """Values are quoted by papermill: quotes, backslashes and newlines stay text."""
    marker = tmp_path / "PWNED"
    nasty = f'a"; __import__("os").system("touch {marker}"); b="\\\\"\nc'
    grid = _grid(tmp_path, "grid: {x: [1]}\n")
    grid.write_text(grid.read_text() + "parameters:\n  name: " + json.dumps(nasty) + "\n")
    assert run_sweep(grid, progress=False).done == ["x-1"]
    assert not marker.exists()
    result = json.loads((tmp_path / "out" / "x-1" / "result.json").read_text())
    assert result["parameters"]["name"] == nasty


def test_folders_stay_below_the_output(tmp_path):
    grid = _grid(tmp_path, "grid: {name: ['../../../escaped', '/etc/passwd', '..']}\n")
    names = [name for name, _ in load_grid(grid).runs()]
    assert names == ["name-..-..-..-escaped", "name-etc-passwd", "name-.."]
    assert run_sweep(grid, progress=False).done == names
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)
    assert not (tmp_path.parent / "escaped").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out2").mkdir()
    os.symlink(elsewhere, tmp_path / "out2" / "name-a")     # a folder leading out
    grid.write_text(f"notebook: {tmp_path / 'nb.ipynb'}\noutput: {tmp_path / 'out2'}\n"
                    "grid: {name: [a]}\n")
    with pytest.raises(MVFAError, match="the folder of cell 'name-a' would lie outside"):
        run_sweep(grid, progress=False)
    assert not list(elsewhere.iterdir())
    long = load_grid(_grid(tmp_path, f"grid: {{name: ['{'v' * 300}']}}\n")).runs()[0][0]
    assert len(long) == 111 and long.startswith("name-vvv")


def test_colliding_folder_names_are_refused(tmp_path):
    for values in ("[set_a, set-a]", "[Brain, brain]", "[1, 1]"):
        grid = _grid(tmp_path, f"grid: {{name: {values}}}\n")
        with pytest.raises(MVFAError, match=r"cells \{'name': .*\} and \{'name': .*\} would share "
                                            r"the folder 'name-"):
            run_sweep(grid, progress=False)
    assert not (tmp_path / "out").exists()


def test_grid_file_errors_name_the_file_and_the_fix(tmp_path, capsys):
    with pytest.raises(MVFAError, match="does not exist"):
        load_grid(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    _notebook(tmp_path / "nb.ipynb")
    head = f"notebook: {tmp_path / 'nb.ipynb'}\noutput: out\n"
    cases = [
        ("- notebook: nb.ipynb\n", "must be a mapping with notebook:, output:"),
        ("", "must be a mapping with notebook:, output:.* not empty"),
        ("notebook: nb.ipynb\n", r"lacks \['output'\]"),
        (f"notebook: {tmp_path / 'missing.ipynb'}\noutput: out\n", "missing.ipynb does not exist"),
        ("notebook: [a, b]\noutput: out\n", "notebook must be a path, not a list"),
        (head + "parameters: [x, 2]\n", "parameters must be a mapping .* not a list"),
        (head + "grid: [x, 1, 2]\n", "grid must be a mapping .* not a list"),
        (head + "grid: {x: 3}\n", r"grid.x must be a non-empty list of values, e.g. x: \[1, "),
        (head + "grid: {x: []}\n", "grid.x must be a non-empty list .* not an empty list"),
        (head + "grid: {x: [1, 2}\n", r"is not valid YAML \(line 3, column 16\): .*; fix that"),
        (head + "parameters: {name: 2024-01-01}\n", "parameters.name: .*is a date; .*quote it"),
        (head + "parameters: {name: {1: a}}\n", "mapping key 1 must be text"),
        (head + "resources: {gpus: two}\n", "resources.gpus must be a number, not 'two'"),
        (head + "resources: {gpu: 1}\n", r"unknown resources \['gpu'\]"),
        (head + "resources: [1]\n", "resources must be a mapping"),
        (head + "extra: 1\n", r"unknown keys \['extra'\]"),
    ]
    for text, message in cases:
        bad.write_text(text)
        with pytest.raises(MVFAError, match=f"grid file {bad}.*{message}"):
            load_grid(bad)
    bad.write_text(head + "parameters: [x, 2]\n")
    assert main(["sweep", str(bad)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"mvfa-lite sweep: error: grid file {bad}: parameters must be")
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error


def test_notebook_parameters_are_read_from_its_tagged_cell(tmp_path):
    notebook = _notebook(tmp_path / "a.ipynb", "a = 1\nb: int = 2\nc, d = 3, 4  # tuple\n"
                                               "out_dir = '.'\nprint(a)")
    assert notebook_parameters(notebook) == {"a", "b", "c", "d", "out_dir"}
    untagged = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("a = 1")])
    nbformat.write(untagged, tmp_path / "b.ipynb")
    with pytest.raises(MVFAError, match="has no cell tagged 'parameters'"):
        notebook_parameters(tmp_path / "b.ipynb")
    _notebook(tmp_path / "nb.ipynb", "x = 1")
    grid = _grid(tmp_path, "grid: {x: [1]}\n", notebook=False)
    with pytest.raises(MVFAError, match="has no out_dir parameter"):
        load_grid(grid)


def test_grid_cells_and_dry_run(tmp_path, capsys):
    grid = _grid(tmp_path, "parameters: {name: a, x: 0}\ngrid: {x: [1, 2]}\n")
    cells = load_grid(grid).cells()
    assert [(c.name, c.parameters) for c in cells] == [("x-1", {"name": "a", "x": 1}),
                                                        ("x-2", {"name": "a", "x": 2})]
    assert cells[0].inject["out_dir"] == str((tmp_path / "out" / "x-1").resolve())
    assert main(["sweep", str(grid), "--dry-run"]) == 0
    assert "to do: x-1\nto do: x-2\n" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
    no_grid = _grid(tmp_path, "parameters: {x: 5}\n")
    assert [name for name, _ in load_grid(no_grid).runs()] == ["default"]


def test_unavailable_cluster_is_explained(tmp_path, capsys, monkeypatch):
    grid = _grid(tmp_path, "grid: {x: [1]}\n")
    monkeypatch.setenv("PATH", str(tmp_path))       # no sbatch here
    assert main(["sweep", str(grid), "--executor", "slurm"]) == 2
    assert "sbatch is not on this machine's PATH" in capsys.readouterr().err
    assert not (tmp_path / "out" / "x-1" / "result.json").exists()


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_grid_files_are_valid(path, monkeypatch):
    monkeypatch.chdir(REPO)                         # their paths are relative to the root
    grid = load_grid(path.relative_to(REPO))
    cells = grid.cells()
    assert cells and len({cell.folder for cell in cells}) == len(cells)
    assert all(cell.folder.parent == (REPO / grid.output).resolve() for cell in cells)
    if grid.parameters.get("model_name") == "ViT-L-14-336":
        assert grid.resources.gpus == 1              # the real-weight grids ask for a GPU


def test_result_files_are_atomic_and_collected(tmp_path):
    save_result(tmp_path / "a", {"metrics": {"auroc": 0.5}, "history": [{"epoch": 1}],
                                 "parameters": {"levels": [6, 12]}, "name": "a"})
    write_json(tmp_path / "b" / "result.json", {"metrics": {"auroc": 0.7}})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "result.json").write_text("{broken")
    rows = collect_results(tmp_path)
    assert [(r["run"], r["metrics.auroc"]) for r in rows] == [("a", 0.5), ("b", 0.7)]
    assert "history" not in rows[0] and rows[0]["parameters.levels"] == (6, 12)
    assert not list(tmp_path.rglob("*.tmp"))
    assert json.loads((tmp_path / "a" / "result.json").read_text())["name"] == "a"


def test_table2_grid_leaves_each_bmad_set_out(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    grid = load_grid("sweeps/table2_zeroshot.yaml")
    cells = grid.cells()
    targets = [f"data/{key}_AD" for key in ("Histopathology", "Chest", "Retina_OCT2017",
                                            "Brain", "Liver", "Retina_RESC")]
    assert [cell.parameters["target"] for cell in cells] == targets
    assert [cell.name for cell in cells] == ["target-data-" + t[5:].replace("_", "-") for t in targets]
    assert {(c.parameters["sources"], c.parameters["protocol"], c.inject["sources"])
            for c in cells} == {("others", "paper", "others")}
    for key in catalogue.BMAD_KEYS:             # what the notebook resolves "others" to
        (tmp_path / f"{key}_AD").mkdir()
    for target in targets:
        sources = catalogue.leave_one_out(tmp_path / Path(target).name)
        assert [s.name for s in sources] == [f"{k}_AD" for k in catalogue.BMAD_KEYS
                                             if f"data/{k}_AD" != target]
    with pytest.raises(DataError, match="not a BMAD folder"):
        catalogue.leave_one_out(tmp_path / "busi")
    (tmp_path / "Liver_AD").rmdir()
    with pytest.raises(DataError, match="Liver"):
        catalogue.leave_one_out(tmp_path / "Brain_AD")
