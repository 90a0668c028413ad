"""Training loops and whole runs on the embedded real data (tiny random ViT, CPU)."""
from __future__ import annotations

import json

import pytest
import torch

from mvfa_lite.checkpoint import load_adapters, save_checkpoint
from mvfa_lite.cli import main
from mvfa_lite.data import ADDataset
from mvfa_lite.errors import CheckpointError, MetricError
from mvfa_lite.evaluate import Scores, compute_metrics, score_dataset
from mvfa_lite.experiment import load_trained, run_few_shot, run_zero_shot
from mvfa_lite.model import MVFA
from mvfa_lite.shots import split_off_shots
from mvfa_lite.train import Source, ShotSet, fit, train_few_shot


def test_few_shot_training_on_busi_lowers_the_loss(shared_data, tiny_config):
    config = tiny_config.replace(epochs=6, lr=3e-3)
    model = MVFA.from_config(config)
    support, _ = split_off_shots(ADDataset(shared_data / "busi", "embedded"), 4, seed=0)
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
@pytest.mark.parametrize("dataset", ["busi", "chestxray_kermany224", "brainmri_navoneel"])
def test_evaluation_end_to_end_on_each_embedded_set(shared_data, tiny_config, tmp_path,
                                                    protocol, dataset):
    config = tiny_config.replace(protocol=protocol, epochs=1)
    run = run_few_shot(config, shared_data / dataset, support_split="embedded",
                       test_split="embedded", out=tmp_path, progress=False)
    has_masks = dataset == "busi"
    assert len(run.scores.paths) == 40 - 2 * 4
    assert ("pixel_auroc" in run.metrics) == has_masks
    assert 0 <= run.metrics["image_auroc"] <= 1
    assert run.scores.maps.shape == (32, 240, 240)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["protocol"] == protocol and "RANDOM WEIGHTS" in saved["weights"]
    assert saved["selection"] == ("test set (paper protocol)" if protocol == "paper"
                                  else "none (last epoch)")
    assert (tmp_path / "scores.csv").read_text().count("\n") == 33
    if protocol == "paper" and has_masks:   # official rule: image score = max of fused map
        torch.testing.assert_close(run.scores.image_scores, run.scores.maps.flatten(1).amax(1))


def test_zero_shot_leave_one_dataset_out(shared_data, chest_root, tiny_config):
    run = run_zero_shot(tiny_config.replace(epochs=1), chest_root,
                        [shared_data / "busi", shared_data / "brainmri_navoneel"],
                        source_split="embedded", test_split="embedded", progress=False)
    assert run.summary["sources"] == ["busi", "brainmri_navoneel"]
    assert len(run.scores.paths) == 40 and "few_det" not in run.scores.branches
    # the paper's zero-shot image score is the summed det-head score, for every dataset
    torch.testing.assert_close(run.scores.image_scores, run.scores.branches["zero_det"])


def test_checkpoint_round_trip(shared_data, tiny_config, tmp_path):
    root, config = shared_data / "busi", tiny_config.replace(epochs=1)
    run = run_few_shot(config, root, support_split="embedded", test_split="embedded",
                       out=tmp_path, progress=False)
    model, bank, payload = load_trained(tmp_path / "adapters.pth", device="cpu")
    assert payload["dataset"] == "busi" and len(payload["normal_shots"]) == 4
    _, test = split_off_shots(ADDataset(root, "embedded"), 4, seed=config.seed)
    again = score_dataset(model, test, model.text_features("breast ultrasound"), bank,
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


def test_cli_train_evaluate_predict(shared_data, tmp_path, capsys):
    busi = str(shared_data / "busi")
    common = ["--preset", "fast-cpu", "--epochs", "1", "--device", "cpu"]
    assert main(["train", busi, "--support-split", "embedded", "--test-split", "embedded",
                 "--out", str(tmp_path / "run"), *common]) == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "run" / "adapters.pth"), busi, "--split",
                 "embedded", "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["pixel_auroc"] > 0
    images = shared_data / "brainmri_navoneel" / "embedded" / "Ungood" / "img"
    assert main(["predict", str(tmp_path / "run" / "adapters.pth"), str(images),
                 "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "pred").glob("*.png"))) == 20
    assert (tmp_path / "pred" / "scores.csv").read_text().count("\n") == 21


def test_cli_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nowhere"), "--preset", "fast-cpu"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err
    assert main(["evaluate", str(tmp_path / "x.pth"), str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_k_larger_than_the_data_is_explained(shared_data, tiny_config, capsys):
    assert main(["train", str(shared_data / "busi"), "--support-split", "embedded",
                 "--test-split", "embedded", "--preset", "fast-cpu", "--shots", "30"]) == 2
    assert "k=30" in capsys.readouterr().err


def test_cached_stems_score_like_images(shared_data, tiny_model):
    from mvfa_lite.evaluate import StemSet
    data = ADDataset(shared_data / "busi", "embedded").subset(range(18, 24))
    text = tiny_model.text_features("breast ultrasound")
    direct = score_dataset(tiny_model, data, text, progress=False, batch_size=4)
    cached = StemSet(tiny_model, data, batch_size=4)
    assert len(cached) == 6 and cached.has_masks
    again = score_dataset(tiny_model, cached, text, progress=False, batch_size=4)
    assert again.paths == direct.paths
    torch.testing.assert_close(again.image_scores, direct.image_scores)
    torch.testing.assert_close(again.maps, direct.maps)
    torch.testing.assert_close(again.masks, direct.masks)


def test_raw_branch_maps_refuse_to_the_fused_result(shared_data, tiny_model):
    from mvfa_lite.branches import fuse
    from mvfa_lite.evaluate import build_memory_bank
    data = ADDataset(shared_data / "busi", "embedded").subset(range(16, 24))
    text = tiny_model.text_features("breast ultrasound")
    bank = build_memory_bank(tiny_model, torch.rand(2, 3, 240, 240))
    scores = score_dataset(tiny_model, data, text, bank, keep_raw_maps=True, progress=False)
    raw = scores.branches
    assert raw["zero_map"].shape == raw["few_map"].shape == (8, 240, 240)
    torch.testing.assert_close(fuse(raw["zero_map"], raw["few_map"], 0.5), scores.maps)
    plain = score_dataset(tiny_model, data, text, bank, progress=False)
    assert set(plain.branches) == {"zero_det", "few_det"}
