"""Rebuild the book with real CLIP weights on a GPU.

Every notebook of the table of contents is executed with papermill, with the GPU parameters
below injected, into a copy of the book under _build/gpu/; Jupyter Book then renders that copy
without executing it again. Output: _build/gpu/_build/html/index.html
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import papermill
import yaml

GPU_PARAMETERS = {"real_weights": True, "device": "cuda"}   # mvfa_lite.teaching.notebook.REAL
ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "_build" / "gpu"


def main() -> None:
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in ("_toc.yml", "book", "data"):
        source, copy = ROOT / name, TARGET / name
        if copy.exists():
            shutil.rmtree(copy) if copy.is_dir() else copy.unlink()
        (shutil.copytree if source.is_dir() else shutil.copy)(source, copy)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    (TARGET / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    sweep = ROOT / "sweeps" / "book-gpu.yaml"
    if sweep.exists():
        subprocess.run(["mvfa-lite", "sweep", str(sweep)], check=False, cwd=ROOT)
    (TARGET / "notebooks").mkdir(exist_ok=True)
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        print(f"executing {notebook.name} with {GPU_PARAMETERS}", flush=True)
        papermill.execute_notebook(str(notebook), str(TARGET / "notebooks" / notebook.name),
                                   parameters=GPU_PARAMETERS, cwd=str(ROOT / "notebooks"))
    subprocess.run(["jupyter-book", "build", str(TARGET), "--keep-going"], check=True)
    print(f"book: {TARGET / '_build' / 'html' / 'index.html'}")


if __name__ == "__main__":
    main()
