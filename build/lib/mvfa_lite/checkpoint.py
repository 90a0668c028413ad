"""Adapter checkpoints: the trained adapters, the config, and the backbone they belong to.

Only the adapters are saved (the backbone is frozen and loaded from its own weights). The
backbone identity is saved too, and loading into another backbone is refused: adapters
trained on one CLIP's features mean nothing on another's.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import CheckpointError
from .model import MVFA

FORMAT = "mvfa-lite/1"
# identity fields that must agree; the weights' file location may differ between machines
_MUST_MATCH = ("model_name", "pretrained", "image_size", "quick_gelu", "width", "layers",
               "embed_dim", "grid", "levels")


def save_checkpoint(model: MVFA, path: str | Path, **extra) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(format=FORMAT, adapters=model.banks.state_dict(),
                   config=model.config.to_dict(), backbone=model.identity, **extra)
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)          # atomic: a crash never leaves half a checkpoint
    return path


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with "
                              "`mvfa-lite train` or fix the path.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path} ({type(error).__name__}: {error}); "
                              "it is damaged or not an mvfa-lite checkpoint.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mvfa-lite checkpoint (format {FORMAT}); "
                              "official MVFA .pth files are not supported.")
    return payload


def load_adapters(model: MVFA, path: str | Path) -> dict:
    """Load the adapters of ``path`` into ``model``; refuse another backbone. Returns the payload."""
    payload = read_checkpoint(path)
    saved, current = payload["backbone"], model.identity
    different = [f"{key}: checkpoint {saved.get(key)!r} vs model {current.get(key)!r}"
                 for key in _MUST_MATCH if saved.get(key) != current.get(key)]
    if different:
        raise CheckpointError(
            f"checkpoint {path} was trained on another backbone ({'; '.join(different)}). "
            f"Load it with --model {saved.get('model_name')} --pretrained {saved.get('pretrained')}"
            f" (the same image size and levels), or train new adapters for this backbone.")
    model.banks.load_state_dict(payload["adapters"])
    return payload
