"""Stamp every notebook's Colab badge and set-up cell from _config.yml's repository.

The repository's address lives in one place, _config.yml (repository.url and branch), which
also drives the book's launch buttons. This script writes it into each notebook's "Open in
Colab" badge and its set-up cell (the first code cell after the parameters), where the
environment variable MVFA_REPOSITORY overrides it (a course's fork). The set-up cell
installs mvfa-lite from the clone it runs in, else from a wheel uploaded beside the
notebook, else from the repository; a failed install is one line saying what to do. It
ends by moving out_dir below Colab's working folder (teaching.notebook.output_folder).

    python scripts/sync_notebooks.py            # rewrite the notebooks
    python scripts/sync_notebooks.py --check    # exit 1 if a notebook is out of date (tests)
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SETUP_MARK = "# Set-up (Colab, or a Python without mvfa-lite)"
SETUP = '''{mark}: install mvfa-lite once;
# re-running is harmless. A course's fork: set os.environ["MVFA_REPOSITORY"] to its
# URL first. Cannot reach it: upload mvfa_lite-*.whl (`pip wheel --no-deps .` in a
# clone) to the working folder (/content on Colab) and run this cell again.
import importlib
import importlib.util
import os
import pathlib
import subprocess
import sys

REPOSITORY = os.environ.get(  # a course's fork, else _config.yml's
    "MVFA_REPOSITORY", "{url}")


class SetupFailed(Exception):
    def _render_traceback_(self):  # Jupyter shows this one line, not a traceback
        return [str(self)]


if importlib.util.find_spec("mvfa_lite") is None:
    here = pathlib.Path.cwd()
    clone = next((p for p in (here, *here.parents) if (p / "mvfa_lite").is_dir()), None)
    wheels = sorted(here.glob("mvfa_lite-*.whl"))
    source = (f"{{clone}}[notebooks]" if clone
              else f"{{wheels[-1]}}[notebooks]" if wheels
              else f"mvfa-lite[notebooks] @ git+{{REPOSITORY}}")
    pip = [sys.executable, "-m", "pip", "install", "-q", source]
    quiet = {{**os.environ, "GIT_TERMINAL_PROMPT": "0"}}  # never ask for a password
    if subprocess.run(pip, env=quiet, capture_output=True).returncode != 0:
        raise SetupFailed(
            f"could not install mvfa-lite from {{source}}; upload mvfa_lite-*.whl to "
            f"{{here}} (or set MVFA_REPOSITORY to a repository you can reach) and rerun.")
    importlib.invalidate_caches()
    print(f"installed mvfa-lite from {{source}}")
else:
    print("mvfa-lite is installed:", importlib.util.find_spec("mvfa_lite").origin)
from mvfa_lite.teaching.notebook import output_folder

out_dir = output_folder(out_dir)  # on Colab: below /content, in its file browser'''
BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^)\s]+")


def expected(repository: dict) -> tuple[str, str]:
    url = repository["url"].rstrip("/")
    slug = url.removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{slug}/blob/{repository['branch']}"
    return SETUP.format(mark=SETUP_MARK, url=url), colab


def sync(notebook: Path, setup: str, colab: str) -> bool:
    """Rewrite one notebook in place; True if it changed."""
    text = notebook.read_text()
    nb = json.loads(text)
    badge = f"{colab}/notebooks/{notebook.name}"
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and BADGE.search(source):
            source = BADGE.sub(badge, source)
        elif cell["cell_type"] == "code" and source.startswith(SETUP_MARK):
            source = setup
        cell["source"] = source.splitlines(keepends=True)
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new != text:
        notebook.write_text(new)
    return new != text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    setup, colab = expected(yaml.safe_load((ROOT / "_config.yml").read_text())["repository"])
    stale = []
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        original = notebook.read_text()
        if sync(notebook, setup, colab):
            stale.append(notebook.name)
            if args.check:
                notebook.write_text(original)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run python scripts/sync_notebooks.py")
        return 1
    print(f"{'checked' if args.check else 'synced'} the notebooks against _config.yml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
