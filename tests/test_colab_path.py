"""The notebooks as Colab runs them: mvfa-lite installed from a wheel (not editable), the
working directory outside the repository, no ../shared, no internet; the set-up cell takes
the repository from MVFA_REPOSITORY, installs an uploaded wheel, fails in one line, and
puts the outputs below Colab's working folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from mvfa_lite.teaching import notebook

REPO = Path(__file__).resolve().parent.parent


def test_notebooks_take_the_repository_from_config():
    url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    check = subprocess.run([sys.executable, "scripts/sync_notebooks.py", "--check"], cwd=REPO,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = ["".join(c["source"]) for c in json.loads(notebook.read_text())["cells"]]
        setup = [c for c in cells if c.startswith("# Set-up (Colab")]
        assert len(setup) == 1 and f'"MVFA_REPOSITORY", "{url}")' in setup[0], notebook.name


def _setup_cell() -> str:
    return next("".join(c["source"]) for c in json.loads(
        (REPO / "notebooks" / "01_quickstart.ipynb").read_text())["cells"]
        if "".join(c["source"]).startswith("# Set-up (Colab"))


def _bare_python(tmp_path, code, path, **env):
    """`code` in a Python that has this environment's packages but not mvfa-lite (no site:
    the editable install is not seen), in a folder outside the repository."""
    work = tmp_path / "bare"
    work.mkdir(exist_ok=True)
    paths = [*path, sysconfig.get_paths()["purelib"]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths)), **env}
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=work, env=env,
                          capture_output=True, text=True)


def test_a_failed_install_is_one_line_naming_the_fix(tmp_path):
    run = _bare_python(tmp_path, "from IPython.core.interactiveshell import InteractiveShell\n"
                       f"InteractiveShell.instance().run_cell({_setup_cell()!r})", [],
                       MVFA_REPOSITORY="file:///nonexistent/mvfa-lite")
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, run.stdout + run.stderr
    assert "could not install mvfa-lite from mvfa-lite[notebooks] @ " \
        "git+file:///nonexistent/mvfa-lite; upload mvfa_lite-*.whl to" in lines[0]


def test_output_folder_moves_below_colab_working_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert notebook.output_folder("../results/x") == "../results/x"     # not on Colab
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    monkeypatch.setattr(notebook, "COLAB_FOLDER", tmp_path)
    assert notebook.output_folder("../results/x") == str(tmp_path / "results" / "x")
    (tmp_path / "clone" / "notebooks").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "clone" / "notebooks")     # a clone inside /content
    assert notebook.output_folder("../results/x") == str(tmp_path / "clone" / "results" / "x")
    assert notebook.output_folder("/abs/out") == "/abs/out"              # a sweep's


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """mvfa-lite's wheel, built from a copy of the checkout."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    wheels, source = tmp_path / "wheels", tmp_path / "source"
    source.mkdir()      # a copy, so that the build leaves the checkout alone
    for name in ("pyproject.toml", "README.md", "LICENSE", "mvfa_lite", "data"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "-q", "wheel", "--no-deps",
                    "--no-build-isolation", "-w", wheels, source],
                   check=True, capture_output=True)
    return next(wheels.glob("*.whl"))


def test_an_uploaded_wheel_is_installed_and_outputs_go_below_content(tmp_path, wheel):
    site = tmp_path / "site"
    site.mkdir()
    (tmp_path / "bare").mkdir()
    shutil.copy(wheel, tmp_path / "bare" / wheel.name)          # what a student uploads
    run = _bare_python(tmp_path, "out_dir = '../results/x'\n" + _setup_cell() +
                       "\nprint(out_dir)", [site], PIP_TARGET=str(site), PIP_NO_DEPS="1",
                       PIP_NO_INDEX="1", COLAB_RELEASE_TAG="test",
                       MVFA_REPOSITORY="file:///nonexistent/mvfa-lite")
    assert run.returncode == 0, run.stderr
    installed, folder = run.stdout.splitlines()
    assert installed == f"installed mvfa-lite from {tmp_path / 'bare' / wheel.name}[notebooks]"
    assert (site / "mvfa_lite").is_dir() and folder == "/content/results/x"


def test_quickstart_runs_from_an_installed_wheel_outside_the_repo(tmp_path, wheel):
    site, work = tmp_path / "site", tmp_path / "work"
    subprocess.run([sys.executable, "-m", "pip", "-q", "install", "--no-deps", "--target",
                    site, wheel], check=True, capture_output=True)
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1",
           "MVFA_SHARED_DATA": str(tmp_path / "nothing"), "TQDM_DISABLE": "1"}
    setup = "out_dir = 'out'\n" + _setup_cell()
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
