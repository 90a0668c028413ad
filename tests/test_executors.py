"""Sweeps on cluster engines, in their own local modes: submitit's local executor (real
submitit jobs, one process each) and a Ray runtime started on this machine. Each runs a
3-cell grid of tiny trainings, one cell made to fail, then a re-submit that runs only it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from mvfa_lite.errors import MVFAError
from mvfa_lite.tools.cli import main
from mvfa_lite.tools.executors import Resources, SlurmExecutor
from mvfa_lite.tools.sweep import load_grid, run_sweep

REPO = Path(__file__).resolve().parent.parent


def _training_notebook(path):
    """A few-shot training of the tiny random ViT on the shipped chest X-rays (1 epoch);
    it fails on purpose for seed 1 while the file `fail_marker` exists."""
    parameters = nbformat.v4.new_code_cell(
        "dataset = 'chestxray_kermany224'\nseed = 0\nshots = 2\nfail_marker = ''\nout_dir = '.'")
    parameters.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import pathlib\n"
        "from mvfa_lite import preset, run_few_shot\n"
        "from mvfa_lite.data import catalogue\n"
        "from mvfa_lite.outputs import save_result\n"
        "if fail_marker and pathlib.Path(fail_marker).exists() and seed == 1:\n"
        "    raise RuntimeError('made to fail')\n"
        "config = preset('fast-cpu', epochs=1, shots=shots, seed=seed, device='cpu')\n"
        "run = run_few_shot(config, catalogue.path(dataset), support_split='embedded',\n"
        "                   test_split='embedded', out=out_dir, save_adapters=False,\n"
        "                   progress=False)\n"
        "save_result(out_dir, {'metrics': run.metrics, 'parameters': {'seed': seed}})")
    _write(nbformat.v4.new_notebook(cells=[parameters, body]), path)


def _write(notebook, path):
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, path)


@pytest.fixture
def tiny_grid(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")      # three cells share two cores
    _training_notebook(tmp_path / "train.ipynb")
    marker = tmp_path / "fail-now"
    marker.touch()
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"notebook: {tmp_path / 'train.ipynb'}\noutput: {tmp_path / 'out'}\n"
                    f"parameters: {{fail_marker: {marker}}}\ngrid: {{seed: [0, 1, 2]}}\n"
                    "resources: {cpus: 1, mem_gb: 4, timeout_min: 10}\n")
    return grid, marker, tmp_path / "out"


def _check_sweep(grid, marker, out, sweep, capsys):
    """First run: two cells done, seed 1 failed with its reason and log; the re-submit after
    the cause is gone runs seed 1 only and leaves the finished cells untouched."""
    assert sweep() == 1
    text = capsys.readouterr().out
    assert "seed-1: failed: RuntimeError: made to fail (see " in text
    assert "sweep " + str(out) + ": 2 run, 0 already finished, 1 failed" in text
    assert (out / "seed-1" / "error.txt").read_text() == "RuntimeError: made to fail\n"
    assert (out / "seed-1" / "failed.ipynb").exists()
    assert not (out / "seed-1" / "result.json").exists()
    finished = {s: (out / f"seed-{s}" / "result.json").stat().st_mtime_ns for s in (0, 2)}
    metrics = json.loads((out / "seed-0" / "result.json").read_text())["metrics"]
    assert 0.0 <= metrics["image_auroc"] <= 1.0
    marker.unlink()
    assert sweep() == 0
    text = capsys.readouterr().out
    assert "submitted 1 cells" in text and "seed-1: done" in text
    assert "1 run, 2 already finished, 0 failed" in text
    assert {s: (out / f"seed-{s}" / "result.json").stat().st_mtime_ns for s in (0, 2)} == finished
    assert json.loads((out / "seed-1" / "result.json").read_text())["parameters"] == {"seed": 1}
    assert json.loads((out / "seed-1" / "cell.json").read_text())["parameters"]["seed"] == 1


def test_slurm_executor_with_submitit_local_jobs(tiny_grid, capsys):
    pytest.importorskip("submitit", reason="the [slurm] extra (submitit) is not installed")
    grid, marker, out = tiny_grid
    _check_sweep(grid, marker, out, lambda: main(
        ["sweep", str(grid), "--executor", "slurm", "--submitit-cluster", "local"]), capsys)
    logs = list((out / ".slurm").rglob("*_log.out"))
    assert len(logs) == 4                             # one submitit job per cell run


def test_slurm_job_that_dies_is_reported_with_its_log(tmp_path):
    """A job killed from outside (time limit, memory, a lost node), not a notebook error:
    its cell fails and is reported with submitit's log."""
    pytest.importorskip("submitit", reason="the [slurm] extra (submitit) is not installed")
    parameters = nbformat.v4.new_code_cell("x = 0\nout_dir = '.'")
    parameters.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(       # the job's processes die: its own and the kernel
        "import os, pathlib, signal\n"
        "if x == 1:\n"
        "    os.kill(os.getppid(), signal.SIGKILL)\n"
        "    os._exit(1)\n"
        "pathlib.Path(out_dir, 'result.json').write_text('{}')")
    _write(nbformat.v4.new_notebook(cells=[parameters, body]), tmp_path / "nb.ipynb")
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"notebook: {tmp_path / 'nb.ipynb'}\noutput: {tmp_path / 'out'}\n"
                    "grid: {x: [1]}\n")
    report = run_sweep(grid, executor=SlurmExecutor(cluster="local"))
    assert report.done == [] and list(report.failed) == ["x-1"]
    failure = report.failed["x-1"]
    assert failure.reason.startswith("UncompletedJobError: the job has not produced any output")
    assert failure.log.endswith("_log.err") and Path(failure.log).exists()
    assert Path(failure.log).parent.parent == tmp_path / "out" / ".slurm"
    assert not (tmp_path / "out" / "x-1" / "result.json").exists()


def test_ray_executor_with_a_local_runtime(tiny_grid, capsys, monkeypatch):
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    grid, marker, out = tiny_grid
    _check_sweep(grid, marker, out, lambda: main(["sweep", str(grid), "--executor", "ray"]),
                 capsys)
    import ray
    assert not ray.is_initialized()                  # the runtime it started is stopped


def test_slurm_jobs_ask_for_the_grids_resources(tmp_path, monkeypatch):
    """The sbatch script submitit writes for a cell carries the grid file's resources,
    with flags on top (no cluster needed: a stand-in srun lets submitit start)."""
    pytest.importorskip("submitit", reason="the [slurm] extra (submitit) is not installed")
    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.chdir(REPO)
    resources = load_grid("sweeps/table1_fewshot.yaml").resources
    assert (resources.gpus, resources.cpus, resources.mem_gb, resources.timeout_min) == (
        1, 8, 32, 480)
    resources = resources.updated(partition="gpu", timeout_min=60, slurm={"account": "lab"})
    executor = SlurmExecutor(resources).submitit_executor(tmp_path / "table1" / ".slurm")
    assert executor._executor.max_num_timeout == 20       # requeued at up to 20 time limits
    script = executor._executor._make_submission_file_text("python -m submitit", "x")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB",
                 "--time=60", "--account=lab", "--job-name=mvfa-table1", "--nodes=1"):
        assert f"#SBATCH {line}\n" in script, line
    typo = SlurmExecutor(Resources(slurm={"acount": "lab"}))
    with pytest.raises(MVFAError, match="resources.slurm: Unknown argument 'acount'"):
        typo.submitit_executor(tmp_path / ".slurm")
