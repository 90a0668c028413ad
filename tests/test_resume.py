"""Nothing lost on a kill (issue 23 item 5): a training with an output folder keeps its state at
every epoch boundary, and a run killed mid-way and started again ends with exactly the result
of a run that was never interrupted (same seed, tiny random ViT, CPU)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from notebook_cases import write_notebook
from test_data import make_dataset

from mvfa_lite.protocols import train, training_state
from mvfa_lite.protocols.experiment import run_zero_shot
from mvfa_lite.protocols.training_state import STATE_FILE

REPO = Path(__file__).resolve().parent.parent


def _result(out: Path) -> dict:
    """What must not depend on the interruption: adapters, numbers, history, scores."""
    metrics = json.loads((out / "metrics.json").read_text())
    adapters = torch.load(out / "adapters.pth", weights_only=True)["adapters"]
    return dict(metrics=metrics["metrics"], history=metrics["history"],
                best_epoch=metrics["best_epoch"], scores=(out / "scores.csv").read_text(),
                adapters={k: v.tolist() for k, v in adapters.items()})


def test_a_training_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    data = make_dataset(tmp_path / "d")
    argv = [sys.executable, "-m", "mvfa_lite", "train", str(data), "--support-split", "test",
            "--test-split", "test", "--preset", "fast-cpu", "--shots", "1", "--device", "cpu",
            "--epochs", "3", "--out"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = subprocess.run([*argv, str(whole)], capture_output=True, text=True, timeout=600,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert not (whole / STATE_FILE).exists()             # deleted once the results are written

    killed = subprocess.Popen([*argv, str(cut)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (cut / STATE_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed"
    killed.send_signal(signal.SIGKILL)                   # as a time limit or pre-emption would
    killed.wait(timeout=60)
    epoch = torch.load(cut / STATE_FILE, weights_only=True)["epoch"]
    assert epoch in (1, 2)                             # killed between two epochs
    assert not (cut / "metrics.json").exists()

    resumed = subprocess.run([*argv, str(cut)], capture_output=True, text=True, timeout=600,
                             env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {epoch} of 3 (state in {cut / STATE_FILE})" in resumed.stdout
    assert _result(cut) == _result(whole)
    assert not (cut / STATE_FILE).exists()


class Killed(BaseException):
    """Stands for the process being killed right after a state was written."""


def test_zero_shot_resumes_on_its_fifths_schedule(chest_root, synth_root, tiny_config, tmp_path,
                                                   monkeypatch):
    """The zero-shot schedule selects within epochs; a state from other settings is ignored."""
    config = tiny_config.replace(epochs=3)

    def run(out):
        return run_zero_shot(config, chest_root, [synth_root], source_split="valid",
                             test_split="embedded", progress=False, out=out, save_maps=False)
    whole = run(tmp_path / "whole")
    save = training_state.save

    def save_then_die(path, key, **state):
        save(path, key, **state)
        if state["epoch"] == 2:
            raise Killed
    monkeypatch.setattr(training_state, "save", save_then_die)
    with pytest.raises(Killed):
        run(tmp_path / "cut")
    monkeypatch.setattr(training_state, "save", save)
    assert torch.load(tmp_path / "cut" / STATE_FILE, weights_only=True)["epoch"] == 2
    resumed = run(tmp_path / "cut")
    assert resumed.metrics == whole.metrics and resumed.train.history == whole.train.history
    assert resumed.train.best_epoch == whole.train.best_epoch
    for a, b in zip(resumed.model.banks.parameters(), whole.model.banks.parameters()):
        assert torch.equal(a, b)
    assert not (tmp_path / "cut" / STATE_FILE).exists()


def test_a_state_for_other_settings_is_not_resumed(tiny_config, tmp_path):
    from mvfa_lite.data.shots import shot_set
    images = torch.rand(4, 3, tiny_config.image_size, tiny_config.image_size)
    shots = shot_set(images, torch.zeros(4, tiny_config.image_size, tiny_config.image_size),
                     torch.tensor([0, 0, 1, 1]), False)
    source = train.Source("x", shots, torch.rand(64, 2), True)
    key = training_state.identity(tiny_config, [source], epochs=2)
    assert key == training_state.identity(tiny_config, [source], epochs=2)
    assert key != training_state.identity(tiny_config, [source], epochs=3)
    assert key != training_state.identity(tiny_config.replace(seed=5), [source], epochs=2)
    other = train.Source("x", shot_set(images.flip(0), shots.masks, shots.labels, False),
                         source.text, True)
    assert key != training_state.identity(tiny_config, [other], epochs=2)   # other images
    training_state.save(tmp_path / STATE_FILE, key, epoch=1)
    assert training_state.load(tmp_path / STATE_FILE, key)["epoch"] == 1
    assert training_state.load(tmp_path / STATE_FILE, "another") is None
    (tmp_path / STATE_FILE).write_bytes(b"cut short")
    assert training_state.load(tmp_path / STATE_FILE, key) is None


def _grid(tmp_path: Path, output: str, data: Path) -> Path:
    write_notebook(tmp_path / "train.ipynb", "data = ''\nepochs = 4\nout_dir = '.'", (
        "from mvfa_lite import preset, run_few_shot\n"
        "from mvfa_lite.outputs import save_result\n"
        "config = preset('fast-cpu', epochs=epochs, shots=1, device='cpu')\n"
        "run = run_few_shot(config, data, support_split='test', test_split='test', out=out_dir,\n"
        "                   progress=False)\n"
        "save_result(out_dir, {'metrics': run.metrics, 'history': run.train.history,\n"
        "                      'best_epoch': run.train.best_epoch})"))
    grid = tmp_path / f"{output}.yaml"
    grid.write_text(f"notebook: {tmp_path / 'train.ipynb'}\noutput: {tmp_path / output}\n"
                    f"parameters: {{data: {data}}}\ngrid: {{epochs: [4]}}\n")
    return grid


def test_a_slurm_cell_signalled_for_its_time_limit_is_requeued_and_resumes(tmp_path,
                                                                           monkeypatch):
    """submitit's checkpoint/requeue, for real on its local cluster: the signal SLURM sends
    before the time limit (``--signal``) requeues the cell, which continues after its last
    epoch and writes the result of an uninterrupted run."""
    pytest.importorskip("submitit", reason="the [slurm] extra (submitit) is not installed")
    from mvfa_lite.tools.executors import Requeueable, Resources, SlurmExecutor
    from mvfa_lite.tools.sweep import load_grid, run_cell
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = make_dataset(tmp_path / "d")
    (whole,) = load_grid(_grid(tmp_path, "whole", data)).cells()
    (cut,) = load_grid(_grid(tmp_path, "cut", data)).cells()
    assert not run_cell(whole).failed
    executor = SlurmExecutor(Resources(timeout_min=10), cluster="local")
    job = executor.submitit_executor(tmp_path / "cut" / ".slurm").submit(Requeueable(run_cell),
                                                                         cut)
    deadline = time.monotonic() + 600
    while not (cut.folder / STATE_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not job.done()
    controller = job._process.pid       # the cell runs in its child, as under slurmstepd
    (task,) = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    os.kill(int(task), signal.SIGUSR2)  # SLURM's signal before a time limit or pre-emption
    result = job.result()
    assert not result.failed, result.reason
    assert "resuming after epoch" in (cut.folder / "notebook.ipynb").read_text()
    assert "Requeued job" in Path(job.paths.stdout).read_text()       # submitit's own log
    read = [json.loads((c.folder / "result.json").read_text()) for c in (whole, cut)]
    assert read[0] == read[1]
