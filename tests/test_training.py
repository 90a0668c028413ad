"""Training loops and whole runs on the shipped data, and on the extra real sets where they
exist (tiny random ViT, CPU)."""
from __future__ import annotations

import json

import pytest
import torch

from mvfa_lite.data import catalogue
from mvfa_lite.data.layout import ADDataset
from mvfa_lite.data.shots import ShotSet, split_off_shots
from mvfa_lite.errors import CheckpointError, MetricError
from mvfa_lite.method.model import MVFA
from mvfa_lite.method.prompts import object_name
from mvfa_lite.protocols.checkpoint import load_adapters, save_checkpoint
from mvfa_lite.protocols.evaluate import Scores, compute_metrics, score_dataset
from mvfa_lite.protocols.experiment import load_trained, run_few_shot, run_zero_shot
from mvfa_lite.protocols.train import Source, fit, train_few_shot
from mvfa_lite.tools.cli import main


@pytest.mark.parametrize("dataset", ["chestxray_synthlesion",
                                     pytest.param("busi", marks=pytest.mark.shared)])
def test_few_shot_training_with_masks_lowers_the_loss(tiny_config, dataset):
    config = tiny_config.replace(epochs=6, lr=3e-3)
    model = MVFA.from_config(config)
    root = catalogue.path(dataset)
    support, _ = split_off_shots(ADDataset(root, catalogue.splits(dataset)[0]), 4, seed=0)
    before = [p.clone() for p in model.banks.parameters()]
    result, shots = train_few_shot(model, support, progress=False)
    assert len(shots) == 2 * 4 * 11                        # k normal + k abnormal, x11
    losses = [epoch["loss"] for epoch in result.history]
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(epoch["focal"] > 0 and epoch["dice"] > 0 for epoch in result.history)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.banks.parameters()))


def test_sources_without_masks_train_the_classification_bank_only(chest_root, tiny_config):
    model = MVFA.from_config(tiny_config)
    data = ADDataset(chest_root, "embedded")
    seg_before = [p.clone() for p in model.banks.seg.parameters()]
    det_before = [p.clone() for p in model.banks.det.parameters()]
    loaded = data.load_all(progress=False)
    source = Source("chest", ShotSet(loaded["image"], loaded["mask"], loaded["label"]),
                    model.text_features("Chest X-ray film"), has_masks=False)
    result = fit(model, [source], epochs=1, lr=1e-3, batch_size=16, progress=False)
    assert result.history[0]["focal"] == 0 and result.history[0]["bce"] > 0
    assert all(torch.equal(a, b) for a, b in zip(seg_before, model.banks.seg.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(det_before, model.banks.det.parameters()))


@pytest.mark.parametrize("protocol", ["paper", "corrected"])
@pytest.mark.parametrize("dataset, has_masks, n_test", [
    ("chestxray_synthlesion", True, 48), ("chestxray_kermany224", False, 32),
    pytest.param("busi", True, 32, marks=pytest.mark.shared),
    pytest.param("brainmri_navoneel", False, 32, marks=pytest.mark.shared)])
def test_evaluation_end_to_end_on_each_named_set(tiny_config, tmp_path, protocol, dataset,
                                                 has_masks, n_test):
    config = tiny_config.replace(protocol=protocol, epochs=1)
    support_split, test_split = catalogue.splits(dataset)
    run = run_few_shot(config, catalogue.path(dataset), support_split=support_split,
                       test_split=test_split, out=tmp_path, progress=False)
    assert len(run.scores.paths) == n_test
    assert ("pixel_auroc" in run.metrics) == has_masks
    assert 0 <= run.metrics["image_auroc"] <= 1
    assert run.scores.maps.shape == (n_test, 240, 240)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["protocol"] == protocol and "RANDOM WEIGHTS" in saved["weights"]
    expected = {"paper": "test set (paper protocol)",   # the official code; corrected: the
                "corrected": "validation images" if support_split != test_split  # rest of
                else "none (last epoch)"}[protocol]                           # the support split
    assert saved["selection"] == expected
    assert (tmp_path / "scores.csv").read_text().count("\n") == n_test + 1
    if protocol == "paper" and has_masks:   # official rule: image score = max of fused map
        torch.testing.assert_close(run.scores.image_scores,
                                   run.scores.maps.tensor().flatten(1).amax(1))


def test_zero_shot_leave_one_dataset_out(chest_root, synth_root, tiny_config):
    run = run_zero_shot(tiny_config.replace(epochs=1), chest_root, [synth_root],
                        source_split="valid", test_split="embedded", progress=False)
    assert run.summary["sources"] == ["chestxray_synthlesion"]
    assert len(run.scores.paths) == 40 and "few_det" not in run.scores.branches
    torch.testing.assert_close(run.scores.image_scores, run.scores.branches["zero_det"])


def test_zero_shot_leave_one_dataset_out_on_the_extra_sets(shared_data, chest_root, tiny_config):
    run = run_zero_shot(tiny_config.replace(epochs=1), chest_root,
                        [shared_data / "busi", shared_data / "brainmri_navoneel"],
                        source_split="embedded", test_split="embedded", progress=False)
    assert run.summary["sources"] == ["busi", "brainmri_navoneel"]
    assert len(run.scores.paths) == 40 and "few_det" not in run.scores.branches
    # the paper's zero-shot image score is the summed det-head score, for every dataset
    torch.testing.assert_close(run.scores.image_scores, run.scores.branches["zero_det"])


def test_checkpoint_round_trip(synth_root, tiny_config, tmp_path):
    config = tiny_config.replace(epochs=1)
    run = run_few_shot(config, synth_root, support_split="valid", test_split="test",
                       out=tmp_path, progress=False)
    model, bank, payload = load_trained(tmp_path / "adapters.pth", device="cpu")
    assert payload["dataset"] == "chestxray_synthlesion" and len(payload["normal_shots"]) == 4
    test = ADDataset(synth_root, "test")
    again = score_dataset(model, test, model.text_features(object_name(test.name)), bank,
                          progress=False)
    assert again.paths == run.scores.paths
    torch.testing.assert_close(again.image_scores, run.scores.image_scores)


def test_checkpoint_for_another_backbone_is_refused(tiny_model, tiny_config, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "a.pth")
    other = MVFA.from_config(tiny_config.replace(levels=(2, 4)))
    with pytest.raises(CheckpointError, match="another backbone.*levels"):
        load_adapters(other, path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_adapters(tiny_model, tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_adapters(tiny_model, tmp_path / "missing.pth")


def test_one_class_test_set_and_non_finite_scores_are_explained(tiny_model):
    base = dict(paths=["a", "b"], maps=torch.zeros(2, 4, 4), masks=None)
    with pytest.raises(MetricError, match="only normal"):
        compute_metrics(Scores(labels=torch.tensor([0, 0]), image_scores=torch.tensor([0.1, 0.2]), **base))
    with pytest.raises(MetricError, match="non-finite"):
        compute_metrics(Scores(labels=torch.tensor([0, 1]),
                               image_scores=torch.tensor([0.1, float("nan")]), **base))


def test_cli_train_evaluate_predict_on_a_shipped_set_by_name(chest_root, tmp_path, capsys):
    common = ["--preset", "fast-cpu", "--epochs", "1", "--device", "cpu"]
    assert main(["train", "chestxray_synthlesion", "--out", str(tmp_path / "run"), *common]) == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["dataset"] == "chestxray_synthlesion" and saved["precision"] in ("fp32", "bf16")
    # the folder the name resolved to, as it was resolved (a shipped set, not a folder of
    # that name in the working directory)
    assert saved["dataset_root"] == catalogue.path("chestxray_synthlesion").resolve().as_posix()
    assert main(["evaluate", str(tmp_path / "run" / "adapters.pth"), "chestxray_synthlesion",
                 "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["pixel_auroc"] > 0
    images = chest_root / "embedded" / "Ungood" / "img"
    assert main(["predict", str(tmp_path / "run" / "adapters.pth"), str(images),
                 "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "pred").glob("*.png"))) == 20
    assert (tmp_path / "pred" / "scores.csv").read_text().count("\n") == 21


def test_cli_names_a_set_that_is_not_here_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MVFA_SHARED_DATA", str(tmp_path))
    assert main(["train", "busi", "--preset", "fast-cpu", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'busi' is not on this machine" in err and "MVFA_SHARED_DATA" in err
    assert "chestxray_synthlesion" in err and "\n" not in err and not (tmp_path / "r").exists()


def test_cli_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nowhere"), "--preset", "fast-cpu"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err
    assert main(["evaluate", str(tmp_path / "x.pth"), str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_k_larger_than_the_data_is_explained(chest_root, capsys):
    assert main(["train", str(chest_root), "--support-split", "embedded",
                 "--test-split", "embedded", "--preset", "fast-cpu", "--shots", "30"]) == 2
    assert "k=30" in capsys.readouterr().err


def test_cached_stems_score_like_images(synth_root, tiny_model):
    from mvfa_lite.protocols.evaluate import StemSet
    data = ADDataset(synth_root, "valid").subset(range(5, 11))
    text = tiny_model.text_features("Chest X-ray film")
    direct = score_dataset(tiny_model, data, text, progress=False, batch_size=4)
    cached = StemSet(tiny_model, data, batch_size=4)
    assert len(cached) == 6 and cached.has_masks
    again = score_dataset(tiny_model, cached, text, progress=False, batch_size=4)
    assert again.paths == direct.paths
    torch.testing.assert_close(again.image_scores, direct.image_scores)
    torch.testing.assert_close(again.maps.tensor(), direct.maps.tensor())
    torch.testing.assert_close(again.masks.tensor(), direct.masks.tensor())


def test_raw_branch_maps_refuse_to_the_fused_result(synth_root, tiny_model):
    from mvfa_lite.method.branches import fuse
    from mvfa_lite.protocols.evaluate import build_memory_bank
    data = ADDataset(synth_root, "valid").subset(range(4, 12))
    text = tiny_model.text_features("Chest X-ray film")
    bank = build_memory_bank(tiny_model, torch.rand(2, 3, 240, 240))
    scores = score_dataset(tiny_model, data, text, bank, keep_raw_maps=True, progress=False)
    raw = scores.branches
    assert raw["zero_map"].shape == raw["few_map"].shape == (8, 240, 240)
    torch.testing.assert_close(fuse(raw["zero_map"], raw["few_map"], 0.5), scores.maps.tensor())
    plain = score_dataset(tiny_model, data, text, bank, progress=False)
    assert set(plain.branches) == {"zero_det", "few_det"}


def test_selection_score_is_image_plus_pixel_auroc():
    # hand-computed: image AUROC 3/4 (one of four abnormal-normal pairs misordered); every
    # anomalous pixel outscores every normal one: pixel AUROC 1
    from mvfa_lite.protocols.train import selection_score
    masks = torch.zeros(4, 4, 4)
    masks[2:, 1:3, 1:3] = 1
    maps = masks * 0.5 + 0.25
    labels, image_scores = torch.tensor([0, 0, 1, 1]), torch.tensor([0.1, 0.4, 0.35, 0.8])
    scores = Scores(["a", "b", "c", "d"], labels, image_scores, maps, masks)
    assert selection_score(scores) == pytest.approx(1.75)
    assert selection_score(Scores(scores.paths, labels, image_scores, maps, None)) == 0.75
