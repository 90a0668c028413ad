"""Sweeps against a cluster's commands, at unit level: stand-in ``sinfo``/``sbatch``/``squeue``
/``sacct``/``scontrol`` executables on PATH that answer as SLURM does and log how they were
called. What is refused is refused before anything is submitted, in one line (exit 2).
(The same against a running SLURM and Ray: scripts/test_cluster.sh.)"""
from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
from notebook_cases import write_notebook
from test_bad_input import run_cli

SINFO = "cpu* (null)\ncpu* (null)\ngpu gpu:a100:4\n"


def _notebook(path: Path) -> Path:
    return write_notebook(path, "x = 0\nout_dir = '.'",
                          "import pathlib\npathlib.Path(out_dir, 'result.json').write_text('{}')")


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


@pytest.mark.parametrize("recorded", [False, True])
def test_a_ray_gcs_address_that_does_not_answer_is_one_line(grid, capsys, monkeypatch,
                                                             tmp_path, recorded):
    """A GCS host:port, given or recorded by a head that was killed (``auto`` reads it from
    Ray's folder), is refused at once: Ray itself would retry it for minutes."""
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]            # closed once the block ends
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    record = tmp_path / "ray" / "ray_current_cluster"
    if recorded:
        record.parent.mkdir()
        record.write_text(f"127.0.0.1:{port}\n")
    line = run_cli(capsys, "sweep", grid(), "--executor", "ray", "--ray-address",
                   "auto" if recorded else f"127.0.0.1:{port}")
    named = (f"--ray-address auto: the Ray cluster recorded in {record} (127.0.0.1:{port})"
             if recorded else f"--ray-address 127.0.0.1:{port}")
    assert f"{named} does not answer (Connection refused)" in line
    assert "ray start --head" in line


def test_ray_auto_without_a_cluster_is_one_line(grid, capsys, monkeypatch, tmp_path):
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))     # no cluster recorded there
    line = run_cli(capsys, "sweep", grid(), "--executor", "ray", "--ray-address", "auto")
    assert ("--executor ray: cannot start or reach Ray at auto: ConnectionError: no Ray "
            "cluster runs on this machine; start one (ray start) or leave --ray-address out")\
        in line and "`--address`" not in line
    assert f"(Ray's logs: {tmp_path / 'ray' / 'ray' / 'session_latest' / 'logs'})" in line


@pytest.mark.parametrize("executor, module", [("slurm", "submitit"), ("ray", "ray")])
def test_a_missing_extra_is_one_line(grid, capsys, monkeypatch, executor, module):
    monkeypatch.setitem(sys.modules, module, None)          # import fails
    line = run_cli(capsys, "sweep", grid("resources: {timeout_min: 5}\n"),
                   "--executor", executor)
    assert line.endswith(f"--executor {executor} needs {module}: pip install "
                         f"'mvfa-lite[{executor}]'")


# --- one owner per cell, how jobs ended, progress and --status -----------------------------

def _sweep(grid_path, **resources):
    from mvfa_lite.tools.executors import Resources, SlurmExecutor
    from mvfa_lite.tools.sweep import run_sweep
    executor = SlurmExecutor(Resources(timeout_min=30, **resources), poll_seconds=0.05)
    return run_sweep(grid_path, executor=executor)


def test_the_time_limit_is_printed_and_cancelled_and_timed_out_cells_are_named(grid, slurm,
                                                                             capsys, tmp_path):
    slurm.command("sbatch", "echo 'Submitted batch job 4242'")
    slurm.command("sacct", "printf '4242_0|CANCELLED by 0\\n4242_1|TIMEOUT\\n'")
    report = _sweep(grid(), partition="gpu", gpus=1)
    out = capsys.readouterr().out
    assert out.index("time limit 30 min per cell, partition gpu, 1 GPU(s) per cell") < \
        out.index("submitted 2 cells as slurm jobs 4242_0 to 4242_1")
    script = next((tmp_path / "out" / ".slurm").rglob("*.sh")).read_text()
    assert "#SBATCH --time=30\n" in script and "#SBATCH --signal=USR2@90\n" in script
    assert report.failed["x-1"].reason == "SLURM: cancelled (CANCELLED)"
    assert report.failed["x-2"].reason == "SLURM: timed out at its time limit (TIMEOUT)"
    assert "x-2: failed: SLURM: timed out at its time limit (TIMEOUT) (see " in out
    assert "jobs: 0 pending, 0 running, 0 done, 2 failed (x-1, x-2) of 2" in out
    cell = tmp_path / "out" / "x-1"
    assert (cell / "error.txt").read_text() == "SLURM: cancelled (CANCELLED)\n"
    record = json.loads((cell / "job.json").read_text())
    assert record["job_id"] == "4242_0" and record["log"].endswith("4242_0_0_log.err")


def test_without_accounting_scontrol_says_how_a_job_ended_and_nothing_waits_forever(
        grid, slurm, capsys):
    slurm.command("sbatch", "echo 'Submitted batch job 51'")
    slurm.command("sacct", "echo 'sacct: error: Slurm accounting storage is disabled' >&2; "
                           "exit 1")
    slurm.command("scontrol", 'case "$*" in *51_0*) echo "JobId=51 ArrayTaskId=0 '
                              'JobState=CANCELLED Reason=None";; *) exit 1;; esac')
    report = _sweep(grid())
    assert report.failed["x-1"].reason == "SLURM: cancelled (CANCELLED)"
    assert report.failed["x-2"].reason == ("SLURM: the job ended without writing result.json, "
                                           "and SLURM keeps no record of how (no accounting)")
    calls = [c.split()[0] for c in slurm.calls]
    assert calls.count("squeue") == 2 and calls.count("sbatch") == 1    # once before, once after


def test_a_rerun_adopts_a_cell_whose_job_still_runs(grid, slurm, capsys, tmp_path):
    """The sweep was killed; its job 77_0 still runs x-1: the re-run submits x-2 only and
    waits for 77_0, which then writes its result."""
    path = grid()
    cell = tmp_path / "out" / "x-1"
    cell.mkdir(parents=True)
    (cell / "job.json").write_text(json.dumps({"job_id": "77_0", "log": "77.err"}))
    count = tmp_path / "polls"
    slurm.command("squeue", f'echo x >> {count}\n'
                            f'if [ "$(wc -l < {count})" -le 2 ]; then echo "77_0 RUNNING"; '
                            f"else echo '{{}}' > {cell / 'result.json'}; fi")
    slurm.command("sbatch", "echo 'Submitted batch job 78'")
    slurm.command("sacct", "printf '77_0|COMPLETED\\n78|CANCELLED\\n'")
    report = _sweep(path)
    out = capsys.readouterr().out
    assert "adopted 1 cells whose jobs are still pending or running: x-1 (job 77_0)" in out
    assert "submitted 1 cells as slurm jobs 78;" in out         # one cell: no array
    assert len(_submitted(slurm)) == 1 and report.done == ["x-1"]
    assert list(report.failed) == ["x-2"]
    assert "jobs: 0 pending, 1 running, 0 done, 1 failed (x-2) of 2" in out
    assert report.failed["x-2"].reason == "SLURM: cancelled (CANCELLED)"
    assert json.loads((tmp_path / "out" / "x-2" / "job.json").read_text())["job_id"] == "78"


def test_status_says_where_each_cell_stands(grid, slurm, capsys, tmp_path):
    path = grid()
    path.write_text(path.read_text().replace("[1, 2]", "[1, 2, 3, 4]"))
    out = tmp_path / "out"
    for name in ("x-1", "x-2", "x-3"):
        (out / name).mkdir(parents=True)
    from mvfa_lite.tools.sweep import load_grid, run_cell
    assert not run_cell(load_grid(path).cells()[0]).failed          # x-1 finished
    (out / "x-2" / "job.json").write_text(json.dumps({"job_id": "9_1", "log": "l"}))
    (out / "x-3" / "error.txt").write_text("SLURM: timed out at its time limit (TIMEOUT)\n")
    slurm.command("squeue", "echo '9_1 PENDING'")
    from mvfa_lite.tools.cli import main
    assert main(["sweep", str(path), "--status"]) == 0
    text = capsys.readouterr().out
    assert "  x-1: finished\n  x-2: pending (job 9_1)\n" in text
    assert "  x-3: failed: SLURM: timed out at its time limit (TIMEOUT)\n  x-4: to do\n" in text
    assert f"sweep {out}: 1 finished, 1 pending, 0 running, 1 failed, 1 to do" in text
    assert _submitted(slurm) == []


def test_a_ray_token_at_hand_turns_the_clients_token_mode_on(tmp_path, monkeypatch):
    """Ray's head enables token authentication when it finds a token; its clients send it
    only under RAY_AUTH_MODE=token (else ray:// times out): the sweep chooses it then."""
    import os

    from mvfa_lite.tools.cluster import check_ray
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.setenv(name, "x")           # recorded, so that the test leaves them as
        monkeypatch.delenv(name)                # they were
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))              # no cluster recorded
    assert check_ray(None) == "local" and "RAY_AUTH_MODE" not in os.environ
    assert check_ray("auto") == "auto" and "RAY_AUTH_MODE" not in os.environ  # no token
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("secret")
    check_ray("auto")
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")                     # the user's choice
    check_ray("auto")
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
