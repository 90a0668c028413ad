"""Training that survives being killed: :func:`~.train.fit`'s state at every epoch boundary.

A run with an output folder keeps its training state in ``<out>/.training-state.pt``
(:data:`STATE_FILE`), rewritten atomically after every epoch: the adapters, both optimisers,
the loss scaler, the data-order generator and torch's random state, the selection (best
score, epoch and adapters) and the history. A run killed at any moment (a time limit, a
pre-empted node, Ctrl-C) and started again with the same settings and data continues after
the last finished epoch and ends with the same adapters and numbers as a run that was never
interrupted. A state written for other settings or data is ignored (and replaced); the file
is deleted once the results are written.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..outputs import atomic_write

STATE_FILE = ".training-state.pt"


def identity(config, sources, **schedule) -> str:
    """What a state must have been written for: the settings, the schedule (epochs, lr,
    batch size, selection) and the training images themselves."""
    digest = hashlib.sha256(json.dumps([config.to_dict(), schedule], sort_keys=True,
                                       default=str).encode())
    for source in sources:
        digest.update(f"{source.name} {source.has_masks} {len(source.data)}".encode())
        images = getattr(source.data, "images", None)       # in-memory shots
        if isinstance(images, torch.Tensor):
            digest.update(images.detach().float().cpu().numpy().tobytes())
        else:
            digest.update(json.dumps([str(getattr(item, "image_path", item))
                                      for item in getattr(source.data, "items", [])]).encode())
    return digest.hexdigest()


def save(path: Path, key: str, **state) -> None:
    """Write the state (tensors, dicts, numbers) atomically: a kill never leaves half."""
    with atomic_write(path) as temporary:
        torch.save({"identity": key, **state}, temporary)


def load(path: Path | None, key: str) -> dict | None:
    """The state at ``path`` when it was written for ``key``; None otherwise."""
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:               # a damaged state is a state not written: start again
        return None
    return state if isinstance(state, dict) and state.get("identity") == key else None
