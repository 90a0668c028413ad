"""The paths real CLIP weights take (issue 22, items 4-5), run offline with the real file
formats and random values: open_clip's Hugging Face hub cache for ViT-B-16 / ``openai``, an
OpenAI-style TorchScript archive through ``--clip-checkpoint``, and the quickstart notebook
with ``real_weights=True``. ViT-B-16 stands in for ViT-L-14-336 (same code path, same file
names, 300 MB instead of 0.9 GB in float16); the ViT-L-14-336 cache is in the ``slow`` test.
Each subprocess loads ViT-B-16 (~10 s on 2 cores); sizes are cut to the smallest the CLI
takes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_cache import hub_env, hub_repo, make_hf_cache, random_state_dict

REPO = Path(__file__).resolve().parent.parent
MODEL = "ViT-B-16"
# the smallest run of the CLI: 1 shot, 1 epoch, 64 px (a 4 x 4 grid), the 16 valid images
SMALL = ["--epochs", "1", "--image-size", "64", "--shots", "1", "--support-split", "valid",
         "--test-split", "valid", "--batch-size", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def state():
    return random_state_dict(MODEL)                    # float16, like OpenAI's weights


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, state):
    home = tmp_path_factory.mktemp("hf_home")
    make_hf_cache(home, MODEL, "openai", state)
    return home


def run(args, env_extra, cwd, timeout=900, **kwargs):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]), "TQDM_DISABLE": "1", **env_extra}
    env.pop("MVFA_CLIP_CHECKPOINT", None)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_the_cache_is_where_open_clip_looks():
    assert hub_repo(MODEL, "openai") == "timm/vit_base_patch16_clip_224.openai"
    assert hub_repo("ViT-L-14-336", "openai") == "timm/vit_large_patch14_clip_336.openai"


def test_train_offline_from_the_hub_cache(hf_home, state, tmp_path):
    """`mvfa-lite train --pretrained openai` offline: loads the cached file's values (checked
    in a second process at 240 px, where the float16 position grid is resized) and records
    open_clip:openai, not random."""
    out = tmp_path / "run"
    run([sys.executable, "-m", "mvfa_lite", "train", "chestxray_synthlesion", "--model", MODEL,
         "--pretrained", "openai", *SMALL, "--out", str(out)], hub_env(hf_home), tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backbone"]["weights"] == "open_clip:openai"
    assert metrics["backbone"]["weights_random"] is False
    assert "RANDOM" not in metrics["weights"]
    check = ("import torch; from mvfa_lite.method.backbone import load_backbone; "
             f"b = load_backbone('{MODEL}', 'openai', 240); v = b.clip.visual; "
             "torch.save({'conv1': v.conv1.weight, 'cls': v.positional_embedding[0], "
             f"'grid': b.grid}}, r'{tmp_path / 'loaded.pt'}')")
    run([sys.executable, "-c", check], hub_env(hf_home), tmp_path)
    loaded = torch.load(tmp_path / "loaded.pt")
    assert loaded["grid"] == 15
    torch.testing.assert_close(loaded["conv1"], state["visual.conv1.weight"].float())
    torch.testing.assert_close(loaded["cls"], state["visual.positional_embedding"][0].float())


def test_openai_torchscript_archive_through_train(state, tmp_path):
    """An archive in the layout of OpenAI's ViT-B-16.pt (TorchScript, OpenAI's keys and
    integer entries, float16) through --clip-checkpoint, end to end, at a resized grid."""
    import open_clip
    from torchscript_clip import save_torchscript
    clip = open_clip.create_model(MODEL, pretrained=None)
    clip.load_state_dict({k: v.float() for k, v in state.items()})
    archive = tmp_path / "ViT-B-16.pt"
    save_torchscript(clip, archive, half=True, openai_entries=True)
    out = tmp_path / "run"
    run([sys.executable, "-m", "mvfa_lite", "train", "chestxray_synthlesion", "--model", MODEL,
         "--pretrained", "openai", "--clip-checkpoint", str(archive), *SMALL, "--out", str(out)],
        {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty"),
         "MVFA_CACHE": str(tmp_path / "cache")}, tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backbone"]["weights"] == str(archive)
    assert metrics["backbone"]["weights_random"] is False
    assert len(list((tmp_path / "cache").glob("*.state_dict.pt"))) == 1


def test_notebook_helper_sees_the_cache(hf_home, monkeypatch):
    from mvfa_lite.teaching import notebook
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(notebook.torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert notebook.cached(MODEL, "openai") and not notebook.cached("ViT-L-14-336", "openai")
    assert notebook.model_settings(None, model_name=MODEL)["model_name"] == MODEL  # GPU, cache
    assert notebook.model_settings(None)["model_name"] == "tiny-random"   # ViT-L not cached
    monkeypatch.delenv("MVFA_CLIP_CHECKPOINT", raising=False)     # a weights file at hand
    given = notebook.model_settings(None, clip_checkpoint="ViT-L-14-336px.pt")
    assert given["model_name"] == "ViT-L-14-336" and "clip_checkpoint" not in given


def test_quickstart_notebook_with_real_weights_from_the_cache(hf_home, tmp_path):
    """notebooks/01_quickstart.ipynb, real_weights=True, offline, on the CPU, at the smallest
    parameters it takes (its image size is the real 240 px: not a parameter)."""
    out = tmp_path / "out"
    parameters = dict(real_weights=True, model_name=MODEL, pretrained="openai", epochs=1,
                      shots=1, support_split="valid", test_split="valid", device="cpu",
                      out_dir=str(out))
    flags = [part for k, v in parameters.items() for part in ("-p", k, str(v))]
    run([sys.executable, "-m", "papermill", "-k", "python3", str(REPO / "notebooks" /
         "01_quickstart.ipynb"), str(tmp_path / "run.ipynb"), *flags],
        {**hub_env(hf_home), "MVFA_SHARED_DATA": str(tmp_path / "nothing")}, tmp_path,
        timeout=1500)
    executed = (tmp_path / "run.ipynb").read_text()
    assert "real weights: ViT-B-16 (openai)" in executed and "TINY RANDOM" not in executed
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["backbone"]["weights"] == "open_clip:openai"
    assert saved["backbone"]["weights_random"] is False


@pytest.mark.skipif(not os.environ.get("MVFA_SLOW_TESTS"),
                    reason="slow (a 0.9 GB cache of ViT-L-14-336): set MVFA_SLOW_TESTS=1")
def test_paper_backbone_from_the_hub_cache(tmp_path):
    """ViT-L-14-336 / openai, the paper's backbone, from its hub cache at 240 px (the 24 x 24
    float16 position grid resized to 17 x 17) and one forward pass of MVFA."""
    state = random_state_dict("ViT-L-14-336")
    make_hf_cache(tmp_path / "hf", "ViT-L-14-336", "openai", state)
    check = ("import torch; from mvfa_lite import MVFA, MVFAConfig; "
             "m = MVFA.from_config(MVFAConfig(device='cpu')); b = m.backbone; "
             "f = m(torch.rand(1, 3, 240, 240)); "
             "torch.save({'conv1': b.clip.visual.conv1.weight, 'grid': b.grid, "
             "'weights': b.identity['weights'], 'seg': f.seg[0].shape}, "
             f"r'{tmp_path / 'loaded.pt'}')")
    run([sys.executable, "-c", check], hub_env(tmp_path / "hf"), tmp_path)
    loaded = torch.load(tmp_path / "loaded.pt")
    assert loaded["grid"] == 17 and loaded["weights"] == "open_clip:openai"
    assert tuple(loaded["seg"])[:2] == (1, 290)
    torch.testing.assert_close(loaded["conv1"], state["visual.conv1.weight"].float())


def test_the_offline_message_names_the_cache_folder(monkeypatch, tmp_path):
    from mvfa_lite.errors import WeightsError
    from mvfa_lite.method.backbone import load_backbone
    monkeypatch.delenv("MVFA_CLIP_CHECKPOINT", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match="models--timm--vit_base_patch16_clip_224.openai"):
        load_backbone(MODEL, "openai", 224)
