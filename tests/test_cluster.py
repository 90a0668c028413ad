"""Sweeps against a cluster's commands, at unit level: stand-in ``sinfo``/``sbatch``/``squeue``
/``sacct``/``scontrol`` executables on PATH that answer as SLURM does and log how they were
called. What is refused is refused before anything is submitted, in one line (exit 2).
(The same against a running SLURM and Ray: scripts/test_cluster.sh.)"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import nbformat
import pytest
from test_bad_input import run_cli

SINFO = "cpu* (null)\ncpu* (null)\ngpu gpu:a100:4\n"


def _notebook(path: Path) -> Path:
    parameters = nbformat.v4.new_code_cell("x = 0\nout_dir = '.'")
    parameters.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell("import pathlib\n"
                                     "pathlib.Path(out_dir, 'result.json').write_text('{}')")
    notebook = nbformat.v4.new_notebook(cells=[parameters, body])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, path)
    return path


@pytest.fixture
def grid(tmp_path):
    """A 2-cell grid; ``resources`` written as given by each test."""
    def write(resources: str = "") -> Path:
        path = tmp_path / "grid.yaml"
        path.write_text(f"notebook: {_notebook(tmp_path / 'nb.ipynb')}\n"
                        f"output: {tmp_path / 'out'}\ngrid: {{x: [1, 2]}}\n{resources}")
        return path
    return write


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """Stand-in SLURM commands; ``calls`` lists every call as "name args"."""
    pytest.importorskip("submitit", reason="the [slurm] extra (submitit) is not installed")
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()

    def command(name: str, script: str) -> None:
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n{script}\n')
        (bin_dir / name).chmod(0o755)

    command("sinfo", f"printf '{SINFO}'")
    for name in ("sbatch", "squeue", "sacct", "scontrol", "srun"):
        command(name, "exit 0")
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("TQDM_DISABLE", "1")

    class Slurm:
        def __init__(self):
            self.command = command

        @property
        def calls(self) -> list[str]:
            return calls.read_text().splitlines() if calls.exists() else []
    return Slurm()


def _submitted(slurm) -> list[str]:
    return [call for call in slurm.calls if call.startswith("sbatch")]


def test_a_grid_without_a_time_limit_is_refused_before_submission(grid, slurm, capsys,
                                                                   tmp_path):
    line = run_cli(capsys, "sweep", grid(), "--executor", "slurm")
    assert "--executor slurm needs a time limit per cell" in line
    assert "--timeout-min MINUTES" in line and "5 minutes" in line
    assert _submitted(slurm) == [] and not (tmp_path / "out").exists()


def test_a_partition_that_sinfo_does_not_list_is_refused(grid, slurm, capsys, tmp_path):
    line = run_cli(capsys, "sweep", grid(), "--executor", "slurm", "--timeout-min", "30",
                   "--partition", "gpus")
    assert line.endswith("--partition gpus is not a partition of this cluster; sinfo lists "
                         "cpu (no GPUs), gpu (GPUs).")
    assert _submitted(slurm) == [] and not (tmp_path / "out").exists()


def test_gpus_on_a_partition_without_any_are_refused(grid, slurm, capsys):
    line = run_cli(capsys, "sweep", grid("resources: {gpus: 1, timeout_min: 30}\n"),
                   "--executor", "slurm")
    assert "--gpus 1 asked on partition cpu, whose nodes have no GPUs" in line
    assert "use --partition gpu." in line
    assert _submitted(slurm) == []


def test_sbatch_refusing_is_one_line_with_its_words_and_the_log_folder(grid, slurm, capsys,
                                                                      tmp_path):
    slurm.command("sbatch", "echo 'sbatch: error: Batch job submission failed: Invalid "
                            "account or account/partition combination specified' >&2; exit 1")
    line = run_cli(capsys, "sweep", grid(), "--executor", "slurm", "--timeout-min", "30")
    assert ("--executor slurm: the jobs were not submitted: sbatch: error: Batch job "
            "submission failed: Invalid account") in line
    assert f"(submitit's files in {tmp_path / 'out' / '.slurm'})" in line
    assert len(_submitted(slurm)) == 1


def test_a_ray_address_that_does_not_answer_is_one_line(grid, capsys):
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]            # closed once the block ends
    line = run_cli(capsys, "sweep", grid(), "--executor", "ray", "--ray-address",
                   f"ray://127.0.0.1:{port}")
    assert f"--ray-address ray://127.0.0.1:{port} does not answer (Connection refused)" in line
    assert "ray start --head" in line


def test_ray_auto_without_a_cluster_is_one_line(grid, capsys, monkeypatch, tmp_path):
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))     # no cluster recorded there
    line = run_cli(capsys, "sweep", grid(), "--executor", "ray", "--ray-address", "auto")
    assert "--executor ray: cannot start or reach Ray at auto: ConnectionError" in line
    assert "Ray's logs:" in line


@pytest.mark.parametrize("executor, module", [("slurm", "submitit"), ("ray", "ray")])
def test_a_missing_extra_is_one_line(grid, capsys, monkeypatch, executor, module):
    monkeypatch.setitem(sys.modules, module, None)          # import fails
    line = run_cli(capsys, "sweep", grid("resources: {timeout_min: 5}\n"),
                   "--executor", executor)
    assert line.endswith(f"--executor {executor} needs {module}: pip install "
                         f"'mvfa-lite[{executor}]'")
