"""Sweeps: every grid point runs once, failures are kept aside, a rerun resumes."""
from __future__ import annotations

import json

import nbformat
import pytest

from mvfa_lite.errors import MVFAError
from mvfa_lite.results import collect_results, save_result, write_json
from mvfa_lite.sweep import load_grid, run_sweep


def _notebook(path):
    """A two-cell notebook: parameters, then a result (or a crash while `crash_flag` exists)."""
    parameters = nbformat.v4.new_code_cell("x = 0\ncrash_flag = ''\nout_dir = '.'")
    parameters.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import pathlib\n"
        "from mvfa_lite.results import save_result\n"
        "if crash_flag and pathlib.Path(crash_flag).exists() and x == 2:\n"
        "    raise RuntimeError('simulated crash')\n"
        "save_result(out_dir, {'metrics': {'value': x * 10}, 'parameters': {'x': x}})")
    notebook = nbformat.v4.new_notebook(cells=[parameters, body])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, path)


def test_sweep_runs_skips_and_resumes(tmp_path):
    _notebook(tmp_path / "nb.ipynb")
    flag = tmp_path / "crash-now"
    flag.touch()
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"notebook: {tmp_path / 'nb.ipynb'}\noutput: {tmp_path / 'out'}\n"
                    f"parameters: {{crash_flag: {flag}}}\ngrid: {{x: [1, 2, 3]}}\n")
    first = run_sweep(grid, progress=False)
    assert first == {"done": ["x-1", "x-3"], "skipped": [], "failed": ["x-2"]}
    failed = tmp_path / "out" / "x-2"
    assert (failed / "failed.ipynb").exists() and "simulated crash" in (failed / "error.txt").read_text()
    assert not (failed / "result.json").exists()
    flag.unlink()                                   # the cause of the crash is gone: resume
    second = run_sweep(grid, progress=False)
    assert second == {"done": ["x-2"], "skipped": ["x-1", "x-3"], "failed": []}
    assert (failed / "notebook.ipynb").exists()
    rows = collect_results(tmp_path / "out")
    assert sorted(row["metrics.value"] for row in rows) == [10, 20, 30]
    assert {row["run"] for row in rows} == {"x-1", "x-2", "x-3"}


def test_grid_errors_are_explained(tmp_path):
    with pytest.raises(MVFAError, match="does not exist"):
        load_grid(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("notebook: nb.ipynb\n")
    with pytest.raises(MVFAError, match="output"):
        load_grid(bad)
    bad.write_text(f"notebook: {tmp_path / 'missing.ipynb'}\noutput: out\n")
    with pytest.raises(MVFAError, match="missing.ipynb"):
        load_grid(bad)
    _notebook(tmp_path / "nb.ipynb")
    bad.write_text(f"notebook: {tmp_path / 'nb.ipynb'}\noutput: out\ngrid: {{x: 3}}\n")
    with pytest.raises(MVFAError, match="non-empty lists"):
        load_grid(bad)
    grid = tmp_path / "ok.yaml"
    grid.write_text(f"notebook: {tmp_path / 'nb.ipynb'}\noutput: out\n"
                    "parameters: {a: 1}\ngrid: {x: [1, 2], y: [a, b]}\n")
    assert [name for name, _ in load_grid(grid).runs()] == ["x-1_y-a", "x-1_y-b", "x-2_y-a", "x-2_y-b"]
    assert load_grid(grid).runs()[0][1] == {"a": 1, "x": 1, "y": "a"}


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
