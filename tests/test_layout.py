"""The floor plan as tests: the import walls (import-linter's contract in pyproject.toml),
the settings and their command-line options (config.OPTIONS), and module sizes."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

from mvfa_lite.config import OPTIONS, MVFAConfig
from mvfa_lite.tools.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "mvfa_lite"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(root), "PATH": ""})


def test_the_import_walls_hold():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_a_method_module_importing_a_tool_breaks_the_contract(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "mvfa_lite", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    adapters = tmp_path / "mvfa_lite" / "method" / "adapters.py"
    adapters.write_text(adapters.read_text() + "\nfrom ..tools import sweep  # planted\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "mvfa_lite.method is not allowed to import mvfa_lite.tools" in done.stdout
    assert "mvfa_lite.method.adapters -> mvfa_lite.tools.sweep" in done.stdout


def _all_flags(parser) -> set[str]:
    flags = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                flags |= _all_flags(command)
    return flags


def _flags_in_raise_messages() -> dict[str, str]:
    """Every --flag named in the text of a raise statement of the package -> where."""
    named = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise):
                for part in ast.walk(node):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", part.value):
                            named.setdefault(flag, f"{path.relative_to(REPO)}:{node.lineno}")
    return named


def test_every_flag_an_error_message_names_exists():
    flags = _all_flags(build_parser())
    named = _flags_in_raise_messages()
    assert "--image-size" in named and "--seed-file" in named      # the scan finds them
    missing = {flag: where for flag, where in named.items() if flag not in flags}
    assert not missing, f"error messages name options the CLI does not have: {missing}"


def test_every_config_field_has_its_option_in_train():
    fields = {f.name for f in dataclasses.fields(MVFAConfig)}
    assert fields == set(OPTIONS)
    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    assert {flag for _, flag, _, _ in OPTIONS.values()} <= _all_flags(train)


def test_no_module_is_over_400_lines():
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert not {name: n for name, n in sizes.items() if n > 400}


def test_the_dataset_tables_name_the_same_datasets():
    """Dataset facts that live in their own rooms (the catalogue, the prompts' object words,
    the paper's table) must name the same datasets."""
    from mvfa_lite.data import catalogue
    from mvfa_lite.method.prompts import OBJECT_NAMES
    from mvfa_lite.teaching import paper
    assert set(paper.DATASETS) == set(catalogue.BMAD_KEYS) == set(paper.PAPER_NAMES)
    assert set(OBJECT_NAMES) == {*catalogue.BMAD_KEYS, *catalogue.SHIPPED, *catalogue.EXTRA}
    assert set(catalogue.SPLITS) == {*catalogue.SHIPPED, *catalogue.EXTRA}
