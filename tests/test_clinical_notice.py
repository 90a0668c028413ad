"""The research-only notice: one wording (mvfa_lite.outputs.RESEARCH_ONLY), carried by
`mvfa-lite predict` (its --help and what it prints) and by the book's method pages."""
from __future__ import annotations

from pathlib import Path

import pytest
from test_data import make_dataset, write_png

from mvfa_lite.outputs import RESEARCH_ONLY
from mvfa_lite.tools.cli import main

REPO = Path(__file__).resolve().parent.parent


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_the_notice_says_research_only_and_not_clinical():
    assert RESEARCH_ONLY.startswith("Research use only, not for clinical use")


def test_predict_help_carries_the_notice(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert RESEARCH_ONLY in _flat(capsys.readouterr().out)


def test_predict_prints_the_notice(tmp_path, capsys):
    root = make_dataset(tmp_path / "d")
    assert main(["train", str(root), "--support-split", "test", "--test-split", "test",
                 "--preset", "fast-cpu", "--shots", "1", "--device", "cpu", "--epochs", "1",
                 "--image-size", "28", "--no-augment", "--prompts", "single",
                 "--out", str(tmp_path / "run")]) == 0
    write_png(tmp_path / "images" / "x.png", size=(32, 32), value=60)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run" / "adapters.pth"), str(tmp_path / "images"),
                 "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == RESEARCH_ONLY


@pytest.mark.parametrize("page", ["book/method.md", "book/start.md"])
def test_method_pages_carry_the_notice(page):
    assert RESEARCH_ONLY in (REPO / page).read_text()
