"""scripts/gpu_check.sh, the one-call GPU check, run here as its dry run (the CPU, the tiny
model, toy sizes) so that it cannot rot; and the wheels scripts/gpu_wheels.sh pins for it."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("gpu-check")
    completed = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=REPO,
                               env={**os.environ, "OUT": str(out), "PYTHON": sys.executable},
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    return json.loads((out / "summary.json").read_text()), out


def test_every_step_ran_and_the_files_come_back(dry_run):
    summary, out = dry_run
    assert sorted(path.name for path in out.iterdir()) == [
        "bench-h200.json", "compare-official-h200.json", "gpu_check.log", "summary.json"]
    assert {name: step["rc"] for name, step in summary["steps"].items()} == dict.fromkeys(
        ["pytest", "train-gpu-tiny-fp32", "train-gpu-tiny-bf16", "train-gpu-vitl-bf16",
         "train-cpu-tiny-fp32", "bench-bf16-b4", "bench-fp16-b4", "compare-official",
         "train-corrected"], 0)
    assert summary["environment"]["device"] == "cpu" and summary["environment"]["torch"]
    assert "PROJECTION" in (out / "gpu_check.log").read_text()


def test_correctness_figures(dry_run):
    summary, _ = dry_run
    tests = summary["pytest"]
    assert tests["passed"] >= 1 and tests["failures"] == tests["errors"] == 0
    for label, run in summary["train"].items():
        assert len(run["losses"]) == 2 and run["finite"] and run["falling"], (label, run)
        assert 0 <= run["image_auroc"] <= 1 and run["train_seconds"] > 0
    # the "GPU" runs ran on the CPU too: fp32 gives the CPU's scores exactly
    same = summary["agreement"]["gpu-tiny-fp32"]
    assert same["pearson"] == pytest.approx(1) and same["image_auroc_diff"] == 0
    assert 0.5 < summary["agreement"]["gpu-tiny-bf16"]["pearson"] <= 1
    assert summary["targets"]["scores gpu-tiny-fp32 = the CPU's: Pearson >= 0.999"]["met"]


def test_speed_figures(dry_run):
    summary, out = dry_run
    kept = json.loads((out / "bench-h200.json").read_text())
    assert set(kept) == set(summary["bench"]) == {"bf16-b4", "fp16-b4"}
    for label, row in summary["bench"].items():
        assert row["forward_images_per_s"] > 0 and row["train_images_per_s"] > 0
        assert row["precision"] == label[:4] and row["forward_batch"] == 4
        assert kept[label]["stages"]["forward"]["images_per_s"] == row["forward_images_per_s"]
    forward = summary["targets"]["forward bf16, best batch (eager) >= 2000 images/s"]
    assert forward["value"] == summary["bench"]["bf16-b4"]["forward_images_per_s"]


def test_official_figures_and_projection(dry_run):
    summary, out = dry_run
    official = summary["official"]
    assert json.loads((out / "compare-official-h200.json").read_text())["speed"]
    for name in ("official", "paper", "corrected"):
        assert official["measured"][f"{name}_wall_s"] > 0
        assert all(value >= 0 for value in official["rates"][name].values()), name
        assert official["projection"][f"{name}_s"] > official["measured"][f"{name}_wall_s"]
    projection = official["projection"]
    assert "PROJECTION" in projection["what"]
    assert math.isfinite(projection["paper_speedup"]) and projection["corrected_speedup"] > 0


def test_gpu_wheels_pins_what_this_venv_runs():
    script = (REPO / "scripts" / "gpu_wheels.sh").read_text()
    pins = re.findall(r"([\w-]+)==([\w.]+)", " ".join(re.findall(r"_WHEELS=\((.*)\)", script)))
    names = [name for name, _ in pins]
    assert len(names) == len(set(names)) == 6, pins
    for name, version in pins:                          # the header lists exactly the pins
        assert re.search(rf"#\s+{name} {re.escape(version)}\s", script), name
    pinned = dict(pins)
    for name in ("open_clip_torch", "ftfy", "wcwidth"):  # what open_clip runs with here
        assert pinned[name] == metadata.version(name), name
    wanted = re.search(r'"open_clip_torch([^"]*)"', (REPO / "pyproject.toml").read_text())
    assert pinned["open_clip_torch"] in SpecifierSet(wanted.group(1))
    assert {"kornia", "kornia_rs", "setuptools"} <= set(pinned)     # the official code's
    assert int(pinned["setuptools"].split(".")[0]) < 70             # pkg_resources.packaging
