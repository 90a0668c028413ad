"""Adapter checkpoints and CLIP weight files: what is refused, how it is said, what is checked."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from mvfa_lite.errors import CheckpointError, DataError, WeightsError
from mvfa_lite.method.backbone import load_backbone
from mvfa_lite.method.model import MVFA
from mvfa_lite.protocols.checkpoint import (
    FORMAT,
    clip_fingerprint,
    load_adapters,
    read_checkpoint,
    save_checkpoint,
)
from mvfa_lite.protocols.experiment import load_trained
from mvfa_lite.tools.cli import main


class CreatesAFile:
    """Unpickling this object calls open(marker, "w"): it would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def one_line_without_torch_advice(message: str) -> bool:
    return "\n" not in message and "weights_only" not in message and "Weights only" not in message


def edited(payload_path, **changes):
    """Re-save the checkpoint at ``payload_path`` with entries changed (None deletes)."""
    payload = torch.load(payload_path, weights_only=True)
    for key, value in changes.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    torch.save(payload, payload_path)
    return payload_path


@pytest.fixture
def shots(chest_root, tmp_path):
    """Two normal chest X-rays copied to a folder of their own (so the test may edit them)."""
    folder = tmp_path / "shots"
    folder.mkdir()
    sources = sorted((chest_root / "embedded" / "good" / "img").iterdir())[:2]
    assert len(sources) == 2
    return [Path(shutil.copy(source, folder / source.name)) for source in sources]


@pytest.fixture
def other_weights_model(tiny_config):
    """The tiny model with its CLIP weights shifted: same architecture, other weights."""
    model = MVFA.from_config(tiny_config)
    with torch.no_grad():
        for parameter in model.backbone.clip.parameters():
            parameter.add_(0.01)
    return model


# --------------------------------------------------------------------------- round trip


def test_round_trip_restores_adapters_and_bank(tiny_model, shots, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "a.pth", normal_shots=shots, dataset="chest")
    payload = read_checkpoint(path)
    assert payload["format"] == FORMAT and payload["dataset"] == "chest"
    assert payload["clip_fingerprint"] == clip_fingerprint(tiny_model.backbone)
    assert len(payload["normal_shot_sha256"]) == 2
    model, bank, _ = load_trained(path, device="cpu")
    for saved, loaded in zip(tiny_model.banks.parameters(), model.banks.parameters()):
        torch.testing.assert_close(saved, loaded)
    assert bank is not None


def test_fingerprint_tells_weights_apart_and_is_cached(tiny_model, tiny_config,
                                                        other_weights_model):
    fresh = MVFA.from_config(tiny_config)                        # the same (seeded) weights
    assert clip_fingerprint(fresh.backbone) == clip_fingerprint(tiny_model.backbone)
    assert clip_fingerprint(other_weights_model.backbone) != clip_fingerprint(tiny_model.backbone)
    with torch.no_grad():                                       # computed once per backbone
        fresh.backbone.clip.visual.conv1.weight.mul_(2)
    assert clip_fingerprint(fresh.backbone) == clip_fingerprint(tiny_model.backbone)


def test_fingerprint_reaches_the_last_value_of_large_tensors():
    # 49408 x 512 = 25.3 M values (CLIP's token embedding): beyond float32's exact integers
    holder = torch.nn.Module()
    holder.clip = torch.nn.Embedding(49408, 512)
    before = clip_fingerprint(holder)
    other = torch.nn.Module()
    other.clip = holder.clip
    with torch.no_grad():
        holder.clip.weight[-1, -1] += 1
    assert clip_fingerprint(other) != before


# --------------------------------------------------------------------------- not a checkpoint


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", bytes(range(256)) * 40,
                                     b"PK\x03\x04" + b"\x00" * 200])
def test_random_bytes_are_one_line(tiny_model, tmp_path, content):
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        load_adapters(tiny_model, path)
    message = str(caught.value)
    assert str(path) in message and "not a PyTorch file" in message
    assert one_line_without_torch_advice(message)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_never_runs(tiny_model, tmp_path, writer):
    marker = tmp_path / "created-by-the-pickle"
    path = tmp_path / "evil.pth"
    payload = {"format": FORMAT, "adapters": CreatesAFile(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))     # torch's legacy format
    with pytest.raises(CheckpointError) as caught:
        load_adapters(tiny_model, path)
    message = str(caught.value)
    assert not marker.exists()
    assert "refers to Python code (io.open), which is refused without running it" in message
    assert one_line_without_torch_advice(message)


def test_malicious_pickle_in_the_cli_is_one_line(tmp_path, capsys, chest_root):
    marker = tmp_path / "created-by-the-pickle"
    torch.save({"adapters": CreatesAFile(marker)}, tmp_path / "evil.pth")
    assert main(["evaluate", str(tmp_path / "evil.pth"), str(chest_root), "--split",
                 "embedded", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists() and "evil.pth" in err and one_line_without_torch_advice(err)


def test_other_files_and_formats_are_named(tiny_model, tmp_path):
    torch.save({"visual.conv1.weight": torch.zeros(2)}, tmp_path / "clip.pt")   # CLIP weights
    with pytest.raises(CheckpointError, match="not an mvfa-lite checkpoint"):
        read_checkpoint(tmp_path / "clip.pt")
    path = edited(save_checkpoint(tiny_model, tmp_path / "old.pth"), format="mvfa-lite/1")
    with pytest.raises(CheckpointError, match="format 'mvfa-lite/1'.*Retrain"):
        read_checkpoint(path)


# --------------------------------------------------------------------------- damaged checkpoints


def test_missing_and_malformed_entries_are_listed(tiny_model, tmp_path):
    path = edited(save_checkpoint(tiny_model, tmp_path / "a.pth"), config=None,
                  clip_fingerprint=None)
    with pytest.raises(CheckpointError, match=r"missing config, clip_fingerprint\)"):
        read_checkpoint(path)
    path = edited(save_checkpoint(tiny_model, tmp_path / "b.pth"), backbone="ViT",
                  adapters={"seg.0.down.0.weight": [1.0]})
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    assert "malformed backbone (str, expected dict), adapters (holds values that are not " \
           "tensors)" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_wrong_shapes_are_reported_by_name(tiny_model, tmp_path):
    adapters = dict(tiny_model.banks.state_dict())
    adapters["seg.1.down.0.weight"] = torch.zeros(64, 95)
    adapters["det.9.down.0.weight"] = torch.zeros(1)
    del adapters["det.3.down.0.weight"]
    path = edited(save_checkpoint(tiny_model, tmp_path / "a.pth"), adapters=adapters)
    with pytest.raises(CheckpointError) as caught:
        load_adapters(tiny_model, path)
    message = str(caught.value)
    assert "det.3.down.0.weight is missing" in message
    assert "det.9.down.0.weight is not an adapter of this model" in message
    assert "seg.1.down.0.weight is (64, 95) but the model needs (64, 96)" in message
    assert "\n" not in message


def test_unusable_config_is_one_line(tiny_model, tmp_path):
    config = dict(tiny_model.config.to_dict(), protocol="nonsense")
    path = edited(save_checkpoint(tiny_model, tmp_path / "a.pth"), config=config)
    with pytest.raises(CheckpointError, match="unusable config entry.*protocol"):
        load_trained(path, device="cpu")


# --------------------------------------------------------------------------- other weights, shots


def test_other_clip_weights_are_refused_or_allowed_with_a_warning(tiny_model, other_weights_model,
                                                                 tmp_path):
    path = save_checkpoint(other_weights_model, tmp_path / "a.pth")
    with pytest.raises(CheckpointError) as caught:
        load_adapters(tiny_model, path)
    message = str(caught.value)
    assert "other CLIP weights" in message and "--allow-other-weights" in message
    assert "\n" not in message
    with pytest.warns(UserWarning, match="WARNING: .*other CLIP weights.*Loaded anyway"):
        payload = load_adapters(tiny_model, path, allow_other_weights=True)
    assert "do not measure the trained model" in payload["weights_warning"]
    for saved, loaded in zip(other_weights_model.banks.parameters(), tiny_model.banks.parameters()):
        torch.testing.assert_close(saved, loaded)


def test_cli_refuses_other_weights_unless_allowed(other_weights_model, tmp_path, capsys,
                                                  chest_root):
    path = str(save_checkpoint(other_weights_model, tmp_path / "a.pth", dataset="chest"))
    common = [str(chest_root), "--split", "embedded", "--device", "cpu"]
    assert main(["evaluate", path, *common]) == 2
    err = capsys.readouterr().err.strip()
    assert "other CLIP weights" in err and "\n" not in err
    with pytest.warns(UserWarning, match="other CLIP weights"):
        assert main(["evaluate", path, *common, "--allow-other-weights",
                     "--out", str(tmp_path / "eval")]) == 0
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "other CLIP weights" in saved["weights_warning"]
    assert "no ground-truth masks" in saved["pixel_metrics_absent"]


def test_an_edited_normal_shot_is_detected(tiny_model, shots, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "a.pth", normal_shots=shots)
    image = Image.open(shots[1]).convert("L")
    image.putpixel((0, 0), 255 - image.getpixel((0, 0)))      # one pixel changed
    image.save(shots[1])
    with pytest.raises(DataError) as caught:
        load_trained(path, device="cpu")
    message = str(caught.value)
    assert f"the normal shot {shots[1].as_posix()} has changed" in message
    assert "1 of 2 files differ" in message and "--zero-shot-only" in message
    _, bank, _ = load_trained(path, device="cpu", with_bank=False)    # the way out
    assert bank is None
    shots[0].unlink()
    with pytest.raises(DataError, match="are gone"):
        load_trained(path, device="cpu")


# --------------------------------------------------------------------------- CLIP weight files


def test_clip_weight_file_problems_are_one_line_without_download_advice(tmp_path, monkeypatch):
    import open_clip
    monkeypatch.setenv("MVFA_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "created-by-the-pickle"
    state = open_clip.create_model("ViT-S-16", pretrained=None).state_dict()
    state["visual.conv1.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "wrong-shape.pt")
    torch.save({"visual.conv1.weight": CreatesAFile(marker)}, tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00junk" * 100)
    expected = {"wrong-shape.pt": "other shapes (first: visual.conv1.weight)",
                "evil.pt": "refers to Python code (io.open)",
                "junk.pt": "not a PyTorch file"}
    for name, reason in expected.items():
        with pytest.raises(WeightsError) as caught:
            load_backbone("ViT-S-16", "file", 224, checkpoint=tmp_path / name)
        message = str(caught.value)
        assert name in message and reason in message, message
        assert "download" not in message and one_line_without_torch_advice(message)
    assert not marker.exists()
