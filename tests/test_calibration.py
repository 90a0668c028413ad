"""Calibrated per-image scores (issue 22, item 5): the normalisation and the F1-max threshold
are fixed at train time and kept in the checkpoint, so `predict` judges one image on its own;
`--relative` keeps the folder-relative view."""
from __future__ import annotations

import csv
import json
import shutil

import torch

from mvfa_lite.method.branches import branch_bounds, final_scores
from mvfa_lite.protocols.checkpoint import read_checkpoint
from mvfa_lite.tools.cli import main


def test_fixed_bounds_score_each_image_on_its_own():
    torch.manual_seed(0)
    raw = dict(zero_map=torch.rand(5, 4, 4), zero_det=torch.rand(5),
               few_map=torch.rand(5, 4, 4) * 3, few_det=torch.rand(5) * 3)
    bounds = branch_bounds(raw)
    assert bounds["few_det"] == [float(raw["few_det"].min()), float(raw["few_det"].max())]
    for rule in ("det", "seg_max", "paper"):
        relative, maps = final_scores(*raw.values(), True, rule, 0.5)
        fixed, fixed_maps = final_scores(*raw.values(), True, rule, 0.5, bounds)
        torch.testing.assert_close(fixed, relative)          # on the reference set: the same
        torch.testing.assert_close(fixed_maps, maps)
        alone = [final_scores(*(v[i:i + 1] for v in raw.values()), True, rule, 0.5, bounds)[0]
                 for i in range(5)]
        torch.testing.assert_close(torch.cat(alone), relative)   # one image: the same score
    # by hand: the det rule, zero [0, 1] -> (0.5 - 0) / 1, few [1, 3] -> (2 - 1) / 2
    one = dict(zero_map=torch.zeros(1, 1, 1), zero_det=torch.tensor([0.5]),
               few_map=torch.zeros(1, 1, 1), few_det=torch.tensor([2.0]))
    hand = {"zero_map": [0, 1], "zero_det": [0, 1], "few_map": [0, 1], "few_det": [1, 3]}
    assert float(final_scores(*one.values(), False, "det", 0.5, hand)[0]) == 0.5 * 0.5 + 0.5 * 0.5


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_one_image_is_calibrated_and_says_yes_or_no(synth_root, tmp_path, capsys):
    common = ["--preset", "fast-cpu", "--epochs", "1", "--device", "cpu"]
    assert main(["train", "chestxray_synthlesion", "--out", str(tmp_path / "run"), *common]) == 0
    checkpoint = tmp_path / "run" / "adapters.pth"
    saved = read_checkpoint(checkpoint)["calibration"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert saved["threshold"] == metrics["image_f1_threshold"]
    assert saved["pixel_threshold"] == metrics["pixel_f1_threshold"]
    assert set(saved["bounds"]) == {"zero_map", "zero_det", "few_map", "few_det"}
    assert saved["images"] == 48 and "test split" in saved["fitted_on"]

    folder = tmp_path / "images"
    folder.mkdir()
    images = sorted((synth_root / "test" / "Ungood" / "img").iterdir())[:2] + \
        sorted((synth_root / "test" / "good" / "img").iterdir())[:2]
    for image in images:
        shutil.copy(image, folder / image.name)
    assert main(["predict", str(checkpoint), str(folder), "--out", str(tmp_path / "all"),
                 "--device", "cpu"]) == 0
    assert main(["predict", str(checkpoint), str(folder / images[0].name), "--out",
                 str(tmp_path / "one"), "--device", "cpu"]) == 0
    every, one = read_csv(tmp_path / "all" / "scores.csv"), read_csv(tmp_path / "one" / "scores.csv")
    same = next(row for row in every if row["path"].endswith(images[0].name))
    assert len(one) == 1 and one[0]["score"] == same["score"]       # independent of the others
    threshold = float(one[0]["threshold"])
    assert threshold == float(f"{saved['threshold']:.6g}")
    for row in every:
        assert row["anomalous"] == ("yes" if float(row["score"]) >= threshold else "no")

    assert main(["predict", str(checkpoint), str(folder), "--out", str(tmp_path / "relative"),
                 "--device", "cpu", "--relative"]) == 0
    relative = read_csv(tmp_path / "relative" / "scores.csv")
    assert "anomalous" not in relative[0] and "threshold" not in relative[0]
