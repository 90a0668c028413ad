"""Output folders: results appear whole or not at all, and a killed `train` loses nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvfa_lite import outputs
from mvfa_lite.errors import OutputError
from mvfa_lite.outputs import EVALUATE_FILES, OUTPUT_MARKER, TRAIN_FILES, OutputFolder
from mvfa_lite.protocols.training_state import STATE_FILE

REPO = Path(__file__).resolve().parent.parent


def contents(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative name -> bytes), the marker file excepted."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != OUTPUT_MARKER}


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


def old_result(out: Path) -> dict[str, bytes]:
    with OutputFolder(out, "train", TRAIN_FILES).writing() as folder:
        for name in ("adapters.pth", "scores.csv", "maps.npz", "metrics.json"):
            (folder / name).write_text(f"old {name}")
    return contents(out)


def dead_pid() -> int:
    """A process id that no process has right now."""
    for pid in range(4_000_000, 3_000_000, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("no free process id found")


def test_first_result_appears_whole_with_its_marker(tmp_path):
    out = tmp_path / "runs" / "brain"
    folder = OutputFolder(out, "train", TRAIN_FILES)
    assert not out.parent.exists()              # checked before training, created at the end
    with folder.writing() as staging:
        assert staging != out and staging.parent == out.parent
        (staging / "metrics.json").write_text("{}")
        assert not (out / "metrics.json").exists()        # nothing visible before the end
    assert contents(out) == {"metrics.json": b"{}"}
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    assert marker["command"] == "train" and marker["files"] == ["metrics.json"]
    assert leftovers(out) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_new_result_replaces_the_old_one_and_stale_files_go(tmp_path, monkeypatch, exchange):
    out = tmp_path / "run"
    old_result(out)
    (out / "notes.txt").write_text("mine")
    (out / "plots").mkdir()
    (out / "plots" / "roc.png").write_bytes(b"png")
    if not exchange:      # a file system without atomic exchange
        monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)
    inode = (out / "notes.txt").stat().st_ino
    with OutputFolder(out, "train", TRAIN_FILES).writing() as staging:
        for name in ("adapters.pth", "scores.csv", "metrics.json"):   # no maps this time
            (staging / name).write_text(f"new {name}")
    assert contents(out) == {"adapters.pth": b"new adapters.pth", "scores.csv": b"new scores.csv",
                             "metrics.json": b"new metrics.json", "notes.txt": b"mine",
                             "plots/roc.png": b"png"}   # the stale maps.npz is gone
    assert (out / "notes.txt").stat().st_ino == inode    # carried over as a hard link
    assert leftovers(out) == []


def test_evaluate_into_the_training_folder_keeps_the_adapters(tmp_path):
    out = tmp_path / "run"
    old = old_result(out)
    with OutputFolder(out, "evaluate", EVALUATE_FILES).writing() as staging:
        (staging / "metrics.json").write_text("evaluated")
        (staging / "scores.csv").write_text("evaluated")
    now = contents(out)
    assert now["adapters.pth"] == old["adapters.pth"] and now["metrics.json"] == b"evaluated"
    assert "maps.npz" not in now


def test_out_given_as_a_link_keeps_the_link(tmp_path):
    target = tmp_path / "disk" / "run-7"
    old_result(target)
    (tmp_path / "latest").symlink_to(target)
    with OutputFolder(tmp_path / "latest", "train", TRAIN_FILES).writing() as staging:
        (staging / "metrics.json").write_text("new")
    assert (tmp_path / "latest").is_symlink() and (target / "metrics.json").read_text() == "new"


def test_a_crash_while_writing_leaves_the_old_result(tmp_path, monkeypatch):
    out = tmp_path / "run"
    old = old_result(out)
    for step in ("while writing", "while carrying over", "while swapping"):
        folder = OutputFolder(out, "train", TRAIN_FILES)
        if step == "while carrying over":
            monkeypatch.setattr(outputs, "_link_or_copy", _crash)
            (out / "notes.txt").write_text("mine")
            old = contents(out)
        if step == "while swapping":
            monkeypatch.setattr(outputs, "_exchange", _crash)
        with pytest.raises(RuntimeError, match="crash"):
            with folder.writing() as staging:
                (staging / "adapters.pth").write_text("new")
                if step == "while writing":
                    _crash()
        assert contents(out) == old, step
        assert leftovers(out) == [], step


def _crash(*args):
    raise RuntimeError("crash")


def test_the_next_command_repairs_what_a_kill_left(tmp_path):
    out = tmp_path / "run"
    old = old_result(out)
    pid = dead_pid()
    # killed between the two renames of the fallback swap: the old folder is aside, the
    # finished new one in its staging folder
    os.rename(out, tmp_path / f".run.previous-{pid}")
    (tmp_path / f".run.partial-{pid}").mkdir()
    (tmp_path / f".run.partial-{pid}" / "metrics.json").write_text("new")
    OutputFolder(out, "train", TRAIN_FILES)
    assert contents(out) == old and leftovers(out) == []


def test_output_folder_errors(tmp_path, monkeypatch):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputError, match=r"file.txt is a file, not a folder"):
        OutputFolder(tmp_path / "file.txt", "train", TRAIN_FILES)
    with pytest.raises(OutputError, match=r"cannot create the output folder .*file.txt/run"):
        OutputFolder(tmp_path / "file.txt" / "run", "train", TRAIN_FILES)
    data = tmp_path / "data" / "Brain_AD"
    data.mkdir(parents=True)
    with pytest.raises(OutputError, match=r"--out .*data contains the input .*Brain_AD"):
        OutputFolder(tmp_path / "data", "train", TRAIN_FILES, inputs=[data])
    with pytest.raises(OutputError, match=r"is the input"):
        OutputFolder(data, "predict", TRAIN_FILES, inputs=[data])
    monkeypatch.chdir(data)
    with pytest.raises(OutputError, match=r"contains the current folder"):
        OutputFolder(tmp_path, "train", TRAIN_FILES)
    OutputFolder(data / "runs" / "a", "train", TRAIN_FILES, inputs=[data])   # inside: fine


def test_read_only_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):            # root ignores permission bits ...
        locked = Path("/sys/kernel")          # ... but not a read-only kernel folder
    with pytest.raises(OutputError, match=rf"cannot write to {locked} \(the output folder\)"):
        OutputFolder(locked, "train", TRAIN_FILES)


# --- a real `train` killed with SIGKILL at every step of writing its results --------------

KILLER = r"""
import json, os, shutil, signal, sys
from pathlib import Path
import torch
from mvfa_lite.tools import cli
from mvfa_lite.protocols import experiment
from mvfa_lite import outputs

data, out = sys.argv[1], Path(sys.argv[2])
common = ["train", data, "--support-split", "test", "--test-split", "test", "--preset",
          "fast-cpu", "--epochs", "1", "--image-size", "28", "--shots", "1", "--no-augment",
          "--prompts", "single", "--device", "cpu", "--out", str(out)]

def run(argv, kill_at=None, exchange=True):
    # train in a forked child, SIGKILLed just before its kill_at-th write step
    pid = os.fork()
    if pid == 0:
        sys.stdout = sys.stderr = open(os.devnull, "w")
        steps = [0]
        def deadly(owner, name):
            real = getattr(owner, name)
            def step(*args, **kwargs):
                steps[0] += 1
                if steps[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*args, **kwargs)
            setattr(owner, name, step)
        if not exchange:
            outputs._exchange = lambda a, b: False
        for owner, name in [(experiment, "save_checkpoint"), (experiment, "write_json"),
                            (outputs.OutputFolder, "_swap_in"), (outputs, "_exchange"),
                            (outputs.os, "rename"), (outputs.shutil, "rmtree")]:
            deadly(owner, name)
        os._exit(cli.main(argv))
    return os.waitpid(pid, 0)[1]

def state():
    files = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    seeds = {}
    if files and "metrics.json" in files:
        seeds["metrics"] = json.loads((out / "metrics.json").read_text())["config"]["seed"]
    if files and "adapters.pth" in files:
        payload = torch.load(out / "adapters.pth", weights_only=True)
        seeds["adapters"] = payload["config"]["seed"]
    scores = (out / "scores.csv").read_text() if files and "scores.csv" in files else None
    return dict(files=files, seeds=seeds, scores=scores,
                leftovers=sorted(p.name for p in out.parent.glob("." + out.name + ".*")))

assert run(common + ["--seed", "1", "--save-maps"]) == 0           # the old result
pristine = out.parent / "pristine"
shutil.copytree(out, pristine)
old = state()
assert run(common + ["--seed", "2"]) == 0                          # the new one, uninterrupted
report = dict(old=old, new=state())
for exchange in (True, False):
    trials = []
    for kill_at in range(1, 40):
        shutil.rmtree(out)
        shutil.copytree(pristine, out)
        status = run(common + ["--seed", "2"], kill_at, exchange)
        after = state()
        outputs.OutputFolder(out, "train", outputs.TRAIN_FILES)    # the next command's repair
        trials.append(dict(killed=os.WIFSIGNALED(status), after=after, repaired=state()))
        if not os.WIFSIGNALED(status):
            break
    report["exchange" if exchange else "two-renames"] = trials
print(json.dumps(report))
"""


def test_killed_train_leaves_the_old_or_the_new_complete_result(tmp_path):
    """SIGKILL `train` just before each step of writing its results (its first and last file,
    the swap, each rename, the clean-up): afterwards the folder holds the old
    complete result (seed 1, with maps.npz) or the new complete one (seed 2, no stale
    maps.npz), never a mixture. Where the file system cannot exchange folders atomically
    (two renames), the next command on the folder restores the old result."""
    data = make_dataset(tmp_path / "data")
    done = subprocess.run([sys.executable, "-c", KILLER, str(data), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    old, new = report["old"], report["new"]
    assert old["files"] == [OUTPUT_MARKER, "adapters.pth", "maps.npz", "metrics.json",
                            "scores.csv"]
    assert old["seeds"] == {"metrics": 1, "adapters": 1}
    assert new["files"] == [OUTPUT_MARKER, "adapters.pth", "metrics.json", "scores.csv"]
    assert new["seeds"] == {"metrics": 2, "adapters": 2} and new["scores"] != old["scores"]

    def complete(state):
        """"old" or "new" when complete; the training state that a run killed after training
        leaves to resume from (training_state.STATE_FILE) is no part of either result."""
        if state["files"] is not None:
            state = {**state, "files": [f for f in state["files"] if f != STATE_FILE]}
        return "old" if state == old else "new" if state == new else None

    for swap in ("exchange", "two-renames"):
        trials = report[swap]
        assert sum(t["killed"] for t in trials) >= 6 and not trials[-1]["killed"], swap
        outcomes = []
        for number, trial in enumerate(trials, 1):
            repaired = complete(trial["repaired"])
            assert repaired is not None, (swap, number, trial)
            if swap == "exchange":    # complete at every moment, before any repair
                assert complete({**trial["after"], "leftovers": []}) == repaired, (number, trial)
            outcomes.append(repaired)
        assert outcomes[0] == "old" and outcomes[-1] == "new", (swap, outcomes)


def make_dataset(root: Path) -> Path:
    """3 normal and 3 abnormal 32x32 grey images with lesion masks, in the MVFA layout."""
    rng = np.random.default_rng(0)
    for kind, count in (("good", 3), ("Ungood", 3)):
        for i in range(count):
            pixels = rng.integers(0, 120, (32, 32), dtype=np.uint8)
            mask = np.zeros((32, 32), dtype=np.uint8)
            if kind == "Ungood":
                pixels[8:20, 8:20] = 250
                mask[8:20, 8:20] = 255
                save(mask, root / "test" / kind / "anomaly_mask" / f"{i}.png")
            save(pixels, root / "test" / kind / "img" / f"{i}.png")
    return root


def save(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
