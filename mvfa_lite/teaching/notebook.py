"""The notebooks' one switch between real CLIP weights and the tiny random-weight ViT, and
where their outputs go on Colab.

``real_weights = None`` (the default of every notebook) means: real OpenAI CLIP ViT-L/14@336
when a CUDA GPU is there and the weights can be had (internet, open_clip's earlier download in
the Hugging Face cache, or ``MVFA_CLIP_CHECKPOINT``); otherwise the tiny random ViT, said
loudly. ``True`` / ``False`` force one or the other.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch

#: what real weights cost: the paper's model, size and schedule (GPU minutes per training)
REAL = dict(model_name="ViT-L-14-336", pretrained="openai", image_size=240, epochs=50)
#: seconds on a laptop CPU; numbers from it test the code and are not results
TINY = dict(model_name="tiny-random", pretrained="random", image_size=240)


#: Colab's working folder: the one its file browser shows
COLAB_FOLDER = Path("/content")


def on_colab() -> bool:
    """True in a Google Colab runtime."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def output_folder(out_dir: str | os.PathLike) -> str:
    """``out_dir`` as the notebook should write it (the set-up cell applies this).

    The notebooks' relative defaults (``../results/notebooks/...``) lead from a checkout's
    ``notebooks/`` to its ``results/``. On Colab, a relative folder that would land outside
    :data:`COLAB_FOLDER` (``/content/../results`` is ``/results``, which the file browser
    does not show) goes below it instead, without its ``..`` parts:
    ``/content/results/notebooks/...``. Elsewhere, and for absolute folders (the sweeps'),
    ``out_dir`` is returned as given."""
    path = Path(out_dir).expanduser()
    if not on_colab() or path.is_absolute():
        return str(out_dir)
    resolved = (Path.cwd() / path).resolve()
    if resolved.is_relative_to(COLAB_FOLDER.resolve()):
        return str(resolved)
    return str(COLAB_FOLDER / Path(*[part for part in path.parts if part != ".."]))


def online(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """True if the weights' host answers (False at once when HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def cached(model_name: str, tag: str) -> bool:
    """True if open_clip's download of ``model_name`` / ``tag`` is in the Hugging Face cache
    (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``), so it loads offline."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache
    try:
        hub = (open_clip.get_pretrained_cfg(model_name, tag) or {}).get("hf_hub", "")
    except Exception:  # an unknown model or tag: nothing is cached for it
        return False
    repo, filename = os.path.split(hub)
    if not repo:
        return False
    names = [filename] if filename else ["open_clip_model.safetensors",
                                         "open_clip_pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)


def model_settings(real_weights: bool | None = None, *, tiny: dict | None = None,
                   clip_checkpoint=None, **explicit) -> dict:
    """MVFAConfig fields for the backbone and schedule, printed with the reason.

    ``real_weights`` None decides (real weights when a GPU and the weights are at hand), True
    / False force it; ``tiny`` holds the notebook's own cheap settings for the tiny ViT, e.g.
    ``dict(epochs=3)``; ``clip_checkpoint``: the notebook's weights file, which counts as
    weights at hand (as ``MVFA_CLIP_CHECKPOINT`` does); ``explicit`` the parameters the user
    set (model_name, pretrained, epochs, image_size), where ``None`` values are ignored.
    """
    gpu = torch.cuda.is_available()
    chosen = {k: v for k, v in explicit.items() if v is not None}
    wanted = {**REAL, **chosen}
    reachable = bool(clip_checkpoint or os.environ.get("MVFA_CLIP_CHECKPOINT")) or \
        cached(wanted["model_name"], wanted["pretrained"]) or online()
    real = real_weights if real_weights is not None else gpu and reachable
    settings = wanted if real else {**TINY, **(tiny or {}), **chosen}
    if real:
        print(f"real weights: {settings['model_name']} ({settings['pretrained']}), "
              f"{settings.get('epochs', '-')} epochs, {'GPU' if gpu else 'CPU (slow)'}")
    else:
        why = "asked for" if real_weights is False else \
            "no GPU" if not gpu else \
            "no internet, nothing in the Hugging Face cache, no clip_checkpoint and no " \
            "MVFA_CLIP_CHECKPOINT"
        print(f"TINY RANDOM-WEIGHT ViT ({why}): numbers test the code and are NOT results. "
              "Set real_weights = True for OpenAI CLIP ViT-L/14@336 (GPU; internet, the "
              "Hugging Face cache, or a weights file in MVFA_CLIP_CHECKPOINT).")
    return settings
