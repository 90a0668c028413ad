"""Helper for the real-weights tests: a Hugging Face hub cache laid out exactly as open_clip's
download leaves it, holding random values in the real file format.

The repository id and file name are the ones open_clip itself resolves for the tag
(``open_clip.get_pretrained_cfg(model, tag)["hf_hub"]``, e.g.
``timm/vit_base_patch16_clip_224.openai/`` -> ``open_clip_model.safetensors`` first, then
``open_clip_pytorch_model.bin``), and the layout is huggingface_hub's::

    HF_HOME/hub/models--ORG--NAME/refs/main                  the commit id
    HF_HOME/hub/models--ORG--NAME/snapshots/COMMIT/FILE   -> ../../blobs/SHA256
    HF_HOME/hub/models--ORG--NAME/blobs/SHA256                the bytes
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import open_clip
import torch

COMMIT = "0123456789abcdef0123456789abcdef01234567"   # any 40-hex commit id
FILES = {"safetensors": "open_clip_model.safetensors", "bin": "open_clip_pytorch_model.bin"}


def hub_repo(model_name: str, tag: str) -> str:
    """The hub repository open_clip downloads ``model_name`` / ``tag`` from."""
    hub = open_clip.get_pretrained_cfg(model_name, tag)["hf_hub"]
    repo, filename = os.path.split(hub)
    assert not filename, f"{hub} names a file; this helper knows the default names only"
    return repo


def random_state_dict(model_name: str, dtype=torch.float16) -> dict:
    """open_clip's state dict of ``model_name`` with random values, in OpenAI's fp16."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        clip = open_clip.create_model(model_name, pretrained=None)
    return {k: v.detach().to(dtype).contiguous() for k, v in clip.state_dict().items()}


def make_hf_cache(hf_home: Path, model_name: str, tag: str, state: dict,
                  fmt: str = "safetensors") -> Path:
    """Writes ``state`` into ``hf_home/hub`` as open_clip's download of ``model_name`` /
    ``tag`` would; returns the snapshot file."""
    repo = hub_repo(model_name, tag)
    folder = Path(hf_home) / "hub" / ("models--" + repo.replace("/", "--"))
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    temporary = folder / "blobs" / "incoming"
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(state, str(temporary))
    else:
        torch.save(state, temporary)
    digest = hashlib.sha256()
    with open(temporary, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 24), b""):
            digest.update(chunk)
    blob = folder / "blobs" / digest.hexdigest()
    temporary.rename(blob)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT / FILES[fmt]
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    return snapshot


def hub_env(hf_home: Path) -> dict:
    """The environment of an offline user whose cache is ``hf_home``."""
    return {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(Path(hf_home) / "hub"),
            "HF_HUB_OFFLINE": "1"}
