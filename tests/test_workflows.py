"""The GitHub workflows cannot run here: they are parsed and checked against the README.

Tests on every push and pull request run the README's test command; the book workflow runs
its book command and publishes the folder the README names; only official actions, pinned
to a release, and no secrets."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"


def _readme_commands() -> set[str]:
    """Every `bash scripts/...` line of the README's bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    return {line.strip() for block in blocks for line in block.splitlines()
            if line.strip().startswith("bash scripts/")}


def _workflow(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))    # YAML 1.1 reads `on` as true
    return workflow


def _runs(job: dict) -> list[str]:
    return [step["run"].strip() for step in job["steps"] if "run" in step]


def _uses(job: dict) -> list[str]:
    return [step["uses"] for step in job["steps"] if "uses" in step]


def test_workflows_match_githubs_schema(tmp_path):
    """check-jsonschema's copy of the GitHub workflow schema (offline)."""
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (the test extra) is missing")
    check = [sys.executable, "-m", "check_jsonschema", "--builtin-schema",
             "vendor.github-workflows"]
    done = subprocess.run(check + sorted(map(str, WORKFLOWS.glob("*.yml"))),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yml"                 # and it does reject a broken one
    broken.write_text((WORKFLOWS / "tests.yml").read_text().replace("runs-on:", "run-on:"))
    done = subprocess.run(check + [str(broken)], capture_output=True, text=True)
    assert done.returncode == 1 and "'runs-on' is a required property" in done.stdout


def test_readme_names_the_commands():
    assert {"bash scripts/test.sh", "bash scripts/book.sh"} <= _readme_commands()
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_tests_run_on_every_push_and_pull_request():
    workflow = _workflow("tests.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    assert workflow["on"]["push"] is None               # every branch
    (job,) = workflow["jobs"].values()
    assert _runs(job) == ["bash scripts/test.sh"]
    assert _uses(job)[0].startswith("actions/checkout@")
    python = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@"))
    assert python["with"]["cache"] == "pip"
    for path in python["with"]["cache-dependency-path"].split():
        assert (REPO / path).is_file(), path
    assert job["timeout-minutes"] >= 90                 # CI's limit for the suite


def test_book_is_built_and_published_to_pages():
    workflow = _workflow("book.yml")
    assert {"push", "pull_request", "workflow_dispatch"} == set(workflow["on"])
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    assert _runs(build) == ["bash scripts/book.sh"]
    readme_output = re.search(r"Output: `(.+?)/index\.html`", (REPO / "README.md").read_text())
    upload = next(s for s in build["steps"]
                  if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == readme_output.group(1) == "_build/html"
    assert deploy["needs"] == "build" and "pull_request" in deploy["if"]
    assert _uses(deploy) == ["actions/deploy-pages@v4"]
    assert deploy["permissions"]["pages"] == deploy["permissions"]["id-token"] == "write"
    assert deploy["environment"]["name"] == "github-pages"
    assert workflow["permissions"] == {"contents": "read"}   # write rights only to deploy


@pytest.mark.parametrize("name", ["tests.yml", "book.yml"])
def test_workflows_use_official_pinned_actions_and_no_secrets(name):
    text = (WORKFLOWS / name).read_text()
    assert "secrets." not in text
    workflow = _workflow(name)
    commands = _readme_commands()
    for job in workflow["jobs"].values():
        assert job["runs-on"] == "ubuntu-latest"
        assert all(re.fullmatch(r"actions/[\w-]+@v\d+", uses) for uses in _uses(job))
        assert set(_runs(job)) <= commands              # nothing the README does not say
        for script in _runs(job):
            assert (REPO / script.split()[1]).is_file()
