"""The distribution: `python -m build` makes an sdist and a wheel holding the package and
the shipped data sets, nothing else; the wheel installed into a fresh virtual environment
runs the command line from a folder outside the repository (offline: the environment
borrows this one's installed dependencies instead of downloading them)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# what `python -m build` reads: the metadata, the package and the shipped sets
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "mvfa_lite", "data")


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist and wheel built from a copy of the build's inputs (the checkout stays clean)."""
    tmp = tmp_path_factory.mktemp("dist")
    (tmp / "src").mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, tmp / "src" / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, tmp / "src" / name)
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir",
                           tmp / "dist", tmp / "src"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp / "dist"


def _expected_data() -> set[str]:
    return {f"mvfa_lite/shipped/{p.relative_to(REPO / 'data').as_posix()}"
            for p in (REPO / "data").rglob("*") if p.suffix in {".md", ".png", ".jpeg"}}


def test_wheel_holds_the_package_and_the_shipped_data_only(dist):
    (wheel,) = dist.glob("mvfa_lite-*.whl")
    (sdist,) = dist.glob("mvfa_lite-*.tar.gz")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "mvfa_lite").rglob("*.py")}
    data = _expected_data()
    assert len(data) > 100 and any(n.endswith(".png") for n in data)   # images and masks
    metadata = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    assert names - metadata == modules | data, sorted((names - metadata) ^ (modules | data))
    entry = zipfile.ZipFile(wheel).read(next(n for n in metadata if n.endswith("entry_points.txt")))
    assert b"mvfa-lite = mvfa_lite.tools.cli:main" in entry
    with tarfile.open(sdist) as archive:
        members = {m.split("/", 1)[1] for m in archive.getnames() if "/" in m}
    assert {"pyproject.toml", "README.md", "mvfa_lite/tools/sweep.py"} <= members
    assert {d.replace("mvfa_lite/shipped/", "data/") for d in data} <= members
    assert not {m for m in members if m.startswith(("build/", ".venv/", "results/"))}


def test_installed_wheel_runs_outside_the_repository(dist, tmp_path):
    (wheel,) = dist.glob("mvfa_lite-*.whl")
    venv, work = tmp_path / "venv", tmp_path / "work"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    # this environment's packages after the venv's own: torch & co. without a download
    borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "borrowed.pth").write_text("\n".join(sorted(borrowed)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "-q", "--python", python, "install",
                    "--no-deps", "--no-index", wheel], check=True, capture_output=True)
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TQDM_DISABLE="1", MVFA_SHARED_DATA=str(tmp_path / "none"))
    run = lambda *argv: subprocess.run(argv, cwd=work, env=env, capture_output=True,  # noqa
                                       text=True, timeout=600)
    where = run(python, "-c", "import mvfa_lite, mvfa_lite.data.catalogue as d; "
                "print(mvfa_lite.__file__); print(d.path('chestxray_synthlesion'))")
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    helped = run(venv / "bin" / "mvfa-lite", "--help")
    assert helped.returncode == 0 and "sweep" in helped.stdout, helped.stderr
    trained = run(venv / "bin" / "mvfa-lite", "train", "chestxray_synthlesion", "--preset",
                  "fast-cpu", "--epochs", "1", "--shots", "2", "--device", "cpu",
                  "--out", "run")
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert 0 <= metrics["metrics"]["image_auroc"] <= 1 and "pixel_auroc" in metrics["metrics"]
    assert not (REPO / "run").exists()
