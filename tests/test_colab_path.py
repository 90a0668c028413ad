"""The notebooks as Colab runs them: mvfa-lite installed from a wheel (not editable), the
working directory outside the repository, no ../shared, no internet."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def test_notebooks_take_the_repository_from_config():
    url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    check = subprocess.run([sys.executable, "scripts/sync_notebooks.py", "--check"], cwd=REPO,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = ["".join(c["source"]) for c in json.loads(notebook.read_text())["cells"]]
        setup = [c for c in cells if c.startswith("# Set-up (Colab")]
        assert len(setup) == 1 and f'REPOSITORY = "{url}"' in setup[0], notebook.name


def test_quickstart_runs_from_an_installed_wheel_outside_the_repo(tmp_path):
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    source = tmp_path / "source"        # a copy, so that the build leaves the checkout alone
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "mvfa_lite", "data"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source],
                   check=True, capture_output=True)
    subprocess.run([*pip, "install", "--no-deps", "--target", site, *wheels.glob("*.whl")],
                   check=True, capture_output=True)
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1",
           "MVFA_SHARED_DATA": str(tmp_path / "nothing"), "TQDM_DISABLE": "1"}
    setup = next("".join(c["source"]) for c in json.loads(
        (REPO / "notebooks" / "01_quickstart.ipynb").read_text())["cells"]
        if "".join(c["source"]).startswith("# Set-up (Colab"))
    twice = subprocess.run([sys.executable, "-c", setup + "\n" + setup], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(twice) == 2 and all(str(site) in line for line in twice), twice  # idempotent

    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "papermill", "-k", "python3",
                    REPO / "notebooks" / "01_quickstart.ipynb", work / "run.ipynb",
                    "-p", "out_dir", str(out), "-p", "epochs", "1"],
                   cwd=work, env=env, check=True, capture_output=True)
    executed = (work / "run.ipynb").read_text()
    assert "TINY RANDOM-WEIGHT ViT" in executed and str(site / "mvfa_lite") in executed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "chestxray_synthlesion" and "pixel_auroc" in metrics["metrics"]
