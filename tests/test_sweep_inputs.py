"""Issue 24, sweeps: inputs resolve one way, finished cells are trusted only on the same
inputs, one writer per output folder, and a grid's size is bounded before it is built."""
from __future__ import annotations

import json
import os
import socket

import pytest
from test_sweep import _grid, _notebook

from mvfa_lite.errors import MVFAError
from mvfa_lite.tools.sweep import load_grid, run_sweep
from mvfa_lite.tools.sweep_inputs import LOCK_FILE

PARAMETERS = "x = 0\ncrash_flag = ''\nname = ''\ndataset = ''\nlr = 0.0\nout_dir = '.'"


def test_bare_words_and_shipped_names_are_never_paths(tmp_path, monkeypatch):
    """Started from inside another dataset's folder, which has valid/, paper/ and a folder
    named like the shipped set: the values reach the notebook as written."""
    _notebook(tmp_path / "nb.ipynb", PARAMETERS)
    grid = _grid(tmp_path, "grid: {name: [paper, valid], dataset: [chestxray_synthlesion]}\n",
                 notebook=False)
    elsewhere = tmp_path / "other_dataset"
    for name in ("paper", "valid", "chestxray_synthlesion"):
        (elsewhere / name).mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    cells = load_grid(grid).cells()
    assert [(c.inject["name"], c.inject["dataset"]) for c in cells] == [
        ("paper", "chestxray_synthlesion"), ("valid", "chestxray_synthlesion")]
    assert all(c.inputs == {} for c in cells)


def test_dataset_path_and_fingerprint_are_recorded_and_compared(tmp_path, monkeypatch):
    _notebook(tmp_path / "nb.ipynb", PARAMETERS)
    data = tmp_path / "work" / "data" / "set"
    (data / "test").mkdir(parents=True)
    (data / "test" / "a.png").write_bytes(b"1")
    grid = _grid(tmp_path, "parameters: {dataset: data/set}\ngrid: {x: [1]}\n", notebook=False)
    monkeypatch.chdir(tmp_path / "work")
    assert run_sweep(grid, progress=False).done == ["x-1"]
    record = json.loads((tmp_path / "out" / "x-1" / "cell.json").read_text())
    assert record["inputs"]["dataset"]["path"] == str(data)
    assert len(record["inputs"]["dataset"]["fingerprint"]) == 16
    assert run_sweep(grid, progress=False).skipped == ["x-1"]
    (data / "test" / "b.png").write_bytes(b"2")                   # the data changed
    with pytest.raises(MVFAError, match=r"x-1 \(dataset: the contents of .*set changed\)"):
        run_sweep(grid, progress=False)
    other = tmp_path / "elsewhere"
    (other / "data" / "set").mkdir(parents=True)
    monkeypatch.chdir(other)                                       # another folder of that name
    with pytest.raises(MVFAError, match=rf"x-1 \(dataset: {data} -> {other / 'data' / 'set'}\)"):
        run_sweep(grid, progress=False)
    assert not (tmp_path / "out" / LOCK_FILE).exists()


def test_one_sweep_writes_an_output_folder_at_a_time(tmp_path):
    grid = _grid(tmp_path, "grid: {x: [1]}\n")
    out = tmp_path / "out"
    out.mkdir()
    lock = {"pid": os.getppid(), "host": socket.gethostname(), "started": "earlier"}
    (out / LOCK_FILE).write_text(json.dumps(lock))
    with pytest.raises(MVFAError, match=rf"another sweep \(pid {os.getppid()} on .*since "
                                        rf"earlier\) is writing {out}; .*delete .*{LOCK_FILE}"):
        run_sweep(grid, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]    # nothing run
    lock["pid"] = 4_000_000 + 17                                      # a killed sweep's lock
    (out / LOCK_FILE).write_text(json.dumps(lock))
    assert run_sweep(grid, progress=False).done == ["x-1"]
    assert not (out / LOCK_FILE).exists()


def test_a_huge_grid_is_refused_before_it_is_built(tmp_path):
    values = "[" + ", ".join(map(str, range(1000))) + "]"
    grid = _grid(tmp_path, f"grid: {{x: {values}, name: {values}, crash_flag: {values}}}\n")
    with pytest.raises(MVFAError, match=r"the grid has 1000000000 cells \(1000 x x 1000 name "
                                        r"x 1000 crash_flag\), more than 10000; split it"):
        load_grid(grid)


def test_exponents_without_a_dot_are_numbers(tmp_path):
    _notebook(tmp_path / "nb.ipynb", PARAMETERS)
    grid = load_grid(_grid(tmp_path, "parameters: {lr: 1e-3}\ngrid: {x: [1]}\n",
                           notebook=False))
    assert grid.parameters["lr"] == 0.001 and isinstance(grid.parameters["lr"], float)


def test_a_dry_run_says_which_folders_are_read(tmp_path, monkeypatch, capsys):
    _notebook(tmp_path / "nb.ipynb", PARAMETERS)
    (tmp_path / "work" / "data" / "a").mkdir(parents=True)
    (tmp_path / "work" / "data" / "b").mkdir()
    grid = _grid(tmp_path, "grid: {dataset: [data/a, data/b]}\n", notebook=False)
    monkeypatch.chdir(tmp_path / "work")
    run_sweep(grid, dry_run=True)
    printed = capsys.readouterr().out
    assert f"reads dataset = {tmp_path / 'work' / 'data' / 'a'}\n" in printed
    assert f"reads dataset = {tmp_path / 'work' / 'data' / 'b'}\n" in printed
    assert not (tmp_path / "out").exists()
