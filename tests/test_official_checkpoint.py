"""The MVFA authors' .pth files in mvfa-lite: read directly, converted once (import-official),
refused in one line when they cannot fit; fetch-official offline; and the proof on identical
inputs (compare-official --parts checkpoint on the stand-in of the official code)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvfa_lite.config import MVFAConfig
from mvfa_lite.data.layout import ADDataset
from mvfa_lite.errors import CheckpointError
from mvfa_lite.protocols.checkpoint import _check_official_weights, file_sha256, read_checkpoint
from mvfa_lite.protocols.experiment import load_trained
from mvfa_lite.protocols.official_checkpoint import adapter_state, official_payload
from mvfa_lite.tools.cli import main

STANDIN = Path(__file__).resolve().parent / "official_standin"
TINY = "tiny-random"


def official_file(model, path: Path, width=None, joint=None) -> Path:
    """``model``'s adapters saved as the official scripts save theirs (with the last level's
    fc2, which the official code builds and never trains); or zeros of ViT-L-14-336's shapes."""
    if width is None:
        state = adapter_state(model)
        width, joint = model.backbone.width, model.backbone.embed_dim
    else:
        state = {bank: {} for bank in ("seg_adapters", "det_adapters")}
        for bank in state.values():
            for level in range(4):
                bank[f"{level}.fc1.0.weight"] = torch.zeros(joint, width)
                bank[f"{level}.fc2.0.weight"] = torch.zeros(width, joint)
    for bank in state.values():
        bank["3.fc2.0.weight"] = torch.zeros(width, joint)
    torch.save(state, path)
    return path


def seed_file(root, path: Path, k: int = 2) -> Path:
    """An official seed file naming the first k normal and abnormal images of root/valid."""
    items = ADDataset(root, "valid").items
    names = {label: [i.image_path.name for i in items if i.label == label][:k] for label in (0, 1)}
    path.write_text(f"a-0: {' '.join(names[1])}\nn-0: {' '.join(names[0])}\n")
    return path


def test_an_official_file_is_read_as_the_paper_model(tmp_path):
    path = official_file(None, tmp_path / "Brain.pth", width=1024, joint=768)
    payload = official_payload(path, setting="zero-shot", dataset="Brain")
    config = MVFAConfig.from_dict(payload["config"])
    assert config.protocol == "paper" and config.model_name == "ViT-L-14-336"
    assert config.image_size == 240 and config.pretrained == "openai"
    assert payload["official"]["sha256"] == file_sha256(path)
    assert payload["official"]["expects_weights"] == "openai"
    assert "seg.3.up.0.weight" not in payload["adapters"]   # the untrained fc2 is dropped
    assert payload["adapters"]["det.2.up.0.weight"].shape == (1024, 768)


def test_import_official_records_the_seed_files_shots(tiny_model, synth_root, tmp_path, capsys):
    path = official_file(tiny_model, tmp_path / "official.pth")
    seeds = seed_file(synth_root, tmp_path / "2-shot.txt")
    out = tmp_path / "adapters.pth"
    assert main(["import-official", str(path), "--setting", "few-shot", "--dataset",
                 "chestxray_synthlesion", "--shots", "2", "--seed-file", str(seeds),
                 "--model", TINY, "--out", str(out)]) == 0
    payload = read_checkpoint(out)
    normal = seeds.read_text().splitlines()[1].split()[1:]
    assert [Path(p).name for p in payload["normal_shots"]] == normal
    assert payload["official"]["setting"] == "few-shot" and payload["dataset"]
    # the converted file and the original give the same model and memory bank
    converted, bank, _ = load_trained(out, device="cpu")
    direct, direct_bank, _ = load_trained(path, device="cpu", official=dict(
        data=synth_root, seed_file=seeds, shots=2, model_name=TINY))
    for a, b in zip(converted.banks.state_dict().values(), direct.banks.state_dict().values()):
        torch.testing.assert_close(a, b)
    for a, b in zip(bank.seg + bank.det, direct_bank.seg + direct_bank.det):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(adapter_state(direct)["seg_adapters"]["0.fc1.0.weight"],
                               adapter_state(tiny_model)["seg_adapters"]["0.fc1.0.weight"])


def test_a_file_of_another_backbone_is_one_line(tiny_model, synth_root, tmp_path, capsys):
    path = official_file(tiny_model, tmp_path / "Brain.pth")
    assert main(["evaluate", str(path), "chestxray_synthlesion", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "--model" in err
    assert "(64, 96) but ViT-L-14-336 needs (768, 1024)" in err
    damaged = torch.load(path, weights_only=True)
    del damaged["det_adapters"]["1.fc1.0.weight"]
    torch.save(damaged, tmp_path / "damaged.pth")
    assert main(["import-official", str(tmp_path / "damaged.pth"), "--setting", "zero-shot",
                 "--dataset", str(synth_root), "--model", TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "det_adapters.1.fc1.0.weight" in err


def test_real_weights_expected_but_random_loaded_is_refused():
    payload = {"official": {"expects_weights": "openai"},
               "backbone": {"model_name": "ViT-L-14-336"}}
    with pytest.raises(CheckpointError, match="expects ViT-L-14-336 with 'openai' weights, but "
                       "random weights are loaded.*--clip-checkpoint"):
        _check_official_weights(payload, {"weights_random": True}, "Brain.pth", False)
    with pytest.warns(UserWarning, match="Loaded anyway"):
        _check_official_weights(payload, {"weights_random": True}, "Brain.pth", True)
    _check_official_weights(payload, {"weights_random": False}, "Brain.pth", False)


def test_fetch_official_offline_fails_at_once_in_one_line(tmp_path, capsys):
    started = time.perf_counter()
    assert main(["fetch-official", "--to", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert time.perf_counter() - started < 10
    assert len(err.splitlines()) == 1 and "cannot reach drive.google.com" in err
    assert "1bV1yzPxJarTRfd8liMIwyHcGywTTEL2k" in err and "few-shot/<Obj>.pth" in err


def test_fetch_official_checks_files_already_there(tmp_path, capsys):
    from mvfa_lite.tools.official import OFFICIAL_DATASETS
    for name in ("few-shot", "zero-shot"):
        for key in OFFICIAL_DATASETS:
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / f"{key}.pth").write_bytes(b"")
    assert main(["fetch-official", "--to", str(tmp_path)]) == 0      # no network needed
    (tmp_path / "zero-shot" / "Liver.pth").unlink()
    assert main(["fetch-official", "--to", str(tmp_path), "--only", "few-shot"]) == 0
    capsys.readouterr()
    assert main(["fetch-official", "--to", str(tmp_path)]) == 2      # the network is tried
    assert "drive.google.com" in capsys.readouterr().err


def lesions(root: Path) -> Path:
    """4 normal and 4 abnormal 64 x 80 grey images; each lesion a bright box with its mask."""
    rng = np.random.default_rng(0)
    for folder in ("good/img", "Ungood/img", "Ungood/anomaly_mask"):
        (root / "embedded" / folder).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 120, (64, 80)).astype(np.uint8)).save(
            root / "embedded/good/img" / f"normal_{i}.png")
        image, mask = rng.integers(0, 120, (64, 80)).astype(np.uint8), np.zeros((64, 80), np.uint8)
        y, x = rng.integers(8, 40, 2)
        image[y:y + 16, x:x + 20], mask[y:y + 16, x:x + 20] = 230, 255
        Image.fromarray(image).save(root / "embedded/Ungood/img" / f"lesion_{i}.png")
        Image.fromarray(mask).save(root / "embedded/Ungood/anomaly_mask" / f"lesion_{i}.png")
    return root


def test_a_checkpoint_saved_by_the_official_code_scores_the_same(tmp_path, capsys):
    out, work = tmp_path / "report.json", tmp_path / "work"
    status = main(["compare-official", str(STANDIN), "--official-python", sys.executable,
                   "--segmentation-data", str(lesions(tmp_path / "lesions")), "--shots", "1",
                   "--model", TINY, "--parts", "checkpoint", "--work-dir", str(work),
                   "--out", str(out)])
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    sets = report["checkpoint"]["sets"]
    assert status == 0 and report["checkpoint"]["passed"], report["checkpoint"]
    assert set(sets) == {"Brain", "Chest"} and sets["Brain"]["test_images"] == 6, sets
    for key, entry in sets.items():                    # with masks, and without
        for setting in ("few-shot", "zero-shot"):      # test_few.py, test_zero.py
            for part in ("image", "pixel") if key == "Brain" else ("image",):
                assert entry[setting][part]["pearson"] >= 0.99999, entry
                assert entry[setting][part]["auroc_diff"] <= 1e-6, entry
    assert "checkpoint: PASS" in printed
    # the file the official train_few.py saved, evaluated as a user would type it
    saved = work / "code" / "ckpt" / "official-trained" / "Brain.pth"
    assert set(torch.load(saved, weights_only=True)) == {"seg_adapters", "det_adapters"}
    assert main(["evaluate", str(saved), "chestxray_synthlesion", "--split", "valid",
                 "--model", TINY, "--device", "cpu"]) == 0
    assert "image_auroc" in capsys.readouterr().out


def test_predict_reads_an_official_file(tiny_model, synth_root, tmp_path, capsys):
    images = tmp_path / "scans"
    images.mkdir()
    for item in ADDataset(synth_root, "valid").items[:3]:
        (images / item.image_path.name).write_bytes(item.image_path.read_bytes())
    path = official_file(tiny_model, tmp_path / "Chest.pth")
    assert main(["predict", str(path), str(images), "--out", str(tmp_path / "out"),
                 "--model", TINY, "--object", "chest", "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "scores.csv").is_file()
    assert "3 overlays" in capsys.readouterr().out
