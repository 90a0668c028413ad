"""Adapter checkpoints: the trained adapters, the config, and what they were trained on.

Only the adapters are saved (the backbone is frozen and loaded from its own weights). Next
to them the checkpoint records what the adapters only make sense with, and loading checks it:

* the backbone's identity (architecture, image size, tapped levels): another one is refused;
* a fingerprint of the CLIP weights: adapters trained on one CLIP's features mean nothing on
  another's, even of the same architecture. Other weights are refused, or accepted with a
  loud warning when asked (``allow_other_weights``, ``--allow-other-weights``);
* the SHA-256 of every normal shot: the few-shot memory bank is rebuilt from these files,
  so a file edited since training is refused instead of silently changing the bank.

Files are read with ``torch.load(weights_only=True)``: loading never runs code, and anything
that is not an mvfa-lite checkpoint is reported in one line.
"""
from __future__ import annotations

import hashlib
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import CheckpointError, DataError, unreadable_reason
from ..method.backbone import TINY_MODEL, Backbone
from ..method.model import MVFA
from ..outputs import atomic_write

FORMAT = "mvfa-lite/2"
# entry: type; every one must be present
_ENTRIES = {"format": str, "adapters": dict, "config": dict, "backbone": dict,
            "clip_fingerprint": str, "normal_shots": list, "normal_shot_sha256": list}
# identity fields that must agree; the weights' file location may differ between machines
_MUST_MATCH = ("model_name", "pretrained", "image_size", "quick_gelu", "width", "layers",
               "embed_dim", "grid", "levels")
_SAMPLES = 64            # elements of each CLIP tensor that enter the fingerprint
_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clip_fingerprint(backbone: Backbone) -> str:
    """A short hash of the CLIP weights: every tensor's name and shape, and ``_SAMPLES`` of
    its values at fixed, evenly spaced positions (as float32, so device and storage type do
    not matter). Milliseconds even for ViT-L; computed once per backbone object."""
    if backbone not in _fingerprints:
        digest = hashlib.sha256()
        for name, tensor in sorted(backbone.clip.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            digest.update(f"{name}{tuple(tensor.shape)}".encode())
            if flat.numel():      # first, last and evenly spaced between (integer positions)
                picks = torch.arange(_SAMPLES) * (flat.numel() - 1) // (_SAMPLES - 1)
                digest.update(flat[picks.to(flat.device)].float().cpu().numpy().tobytes())
        _fingerprints[backbone] = digest.hexdigest()[:16]
    return _fingerprints[backbone]


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_checkpoint(model: MVFA, path: str | Path, normal_shots: Sequence = (), **extra) -> Path:
    """Write the adapters of ``model`` to ``path``; ``normal_shots``: the files the few-shot
    memory bank is built from (hashed, so that later edits are caught); ``extra``: any
    other entries (e.g. dataset=...)."""
    shots = [Path(p).as_posix() for p in normal_shots]
    payload = dict(extra, format=FORMAT, adapters=model.banks.state_dict(),
                   config=model.config.to_dict(), backbone=model.identity,
                   clip_fingerprint=clip_fingerprint(model.backbone), normal_shots=shots,
                   normal_shot_sha256=[file_sha256(p) for p in shots])
    with atomic_write(path) as temporary:     # a crash never leaves half a checkpoint
        torch.save(payload, temporary)
    return Path(path)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's entries, checked for presence and type (never runs code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with "
                              "`mvfa-lite train` or fix the path.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {unreadable_reason(error)}. "
                              "It is not an mvfa-lite checkpoint; pass the adapters.pth that "
                              "`mvfa-lite train` wrote.") from None
    if not isinstance(payload, dict) or not str(payload.get("format", "")).startswith("mvfa-lite/"):
        raise CheckpointError(f"{path} is not an mvfa-lite checkpoint (no format entry "
                              f"{FORMAT!r}) and CLIP weights are not adapter checkpoints. Pass "
                              "the adapters.pth that `mvfa-lite train` or `mvfa-lite "
                              "import-official` wrote (official MVFA .pth files are read "
                              "directly).")
    if payload["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {payload['format']!r}; this "
                              f"mvfa-lite reads {FORMAT!r} (which also records the CLIP weights' "
                              "fingerprint and the normal shots' hashes). Retrain it with "
                              "`mvfa-lite train`.")
    missing = [key for key in _ENTRIES if key not in payload]
    wrong = [f"{key} ({type(payload[key]).__name__}, expected {kind.__name__})"
             for key, kind in _ENTRIES.items()
             if key in payload and not isinstance(payload[key], kind)]
    if not all(isinstance(v, torch.Tensor) for v in payload.get("adapters", {}).values()):
        wrong.append("adapters (holds values that are not tensors)")
    if not missing and not wrong and \
            len(payload["normal_shots"]) != len(payload["normal_shot_sha256"]):
        wrong.append("normal_shot_sha256 (not one hash per normal shot)")
    if missing or wrong:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + \
            ([f"malformed {', '.join(wrong)}"] if wrong else [])
        raise CheckpointError(f"checkpoint {path} is incomplete ({'; '.join(problems)}): it was "
                              "damaged or edited. Retrain it with `mvfa-lite train`.")
    return payload


def load_adapters(model: MVFA, path: str | Path, allow_other_weights: bool = False,
                  payload: dict | None = None, from_its_config: bool = False) -> dict:
    """Load the adapters of ``path`` into ``model`` after checking that they belong to its
    backbone and CLIP weights (module docstring); ``payload``: its entries, when already
    read (:func:`read_checkpoint`); ``from_its_config``: the model was built from the
    checkpoint's own config (``evaluate``, ``predict``), so another backbone means the file
    was edited. Returns the payload; when other weights were allowed,
    ``payload["weights_warning"]`` says so."""
    payload = read_checkpoint(path) if payload is None else payload
    saved, current = payload["backbone"], model.identity
    official = payload.get("official")        # the authors' adapters: see official_checkpoint
    keys = ("model_name", "image_size") if official else _MUST_MATCH
    different = [f"{key}: checkpoint {saved.get(key)!r} vs model {current.get(key)!r}"
                 for key in keys if saved.get(key) != current.get(key)]
    if different and from_its_config:
        raise CheckpointError(
            f"checkpoint {path} contradicts itself: the backbone built from its config is not "
            f"the one it records ({'; '.join(different)}). It was damaged or edited; retrain "
            "it with `mvfa-lite train`.")
    if different:
        raise CheckpointError(
            f"checkpoint {path} was trained on another backbone ({'; '.join(different)}). "
            f"Build the model with model_name={saved.get('model_name')!r}, pretrained="
            f"{saved.get('pretrained')!r} (the same image size and levels), or use "
            "load_trained(checkpoint), which builds its own; or train new adapters.")
    _check_shapes(model, payload["adapters"], path)
    if official:
        _check_official_weights(payload, current, path, allow_other_weights)
        model.banks.load_state_dict(payload["adapters"])
        return payload
    if payload["clip_fingerprint"] != clip_fingerprint(model.backbone) and \
            saved.get("weights") == current.get("weights") == "random" and \
            saved.get("model_name") != TINY_MODEL:
        raise CheckpointError(
            f"checkpoint {path} was trained on random {saved.get('model_name')} weights drawn "
            "by an mvfa-lite older than the fixed seed of random weights; they cannot be built "
            "again. Retrain it (random weights test the code; they never give results).")
    fingerprint = clip_fingerprint(model.backbone)
    if payload["clip_fingerprint"] != fingerprint:
        message = (f"checkpoint {path} was trained with other CLIP weights "
                   f"({saved.get('weights')}, fingerprint {payload['clip_fingerprint']}) than "
                   f"these ({current.get('weights')}, fingerprint {fingerprint}); its adapters "
                   "only fit the features they were trained on.")
        _other_weights(payload, message, "Pass the weights it was trained with "
                       "(--clip-checkpoint), retrain, or evaluate anyway with "
                       "--allow-other-weights (allow_other_weights=True).", allow_other_weights)
    model.banks.load_state_dict(payload["adapters"])
    return payload


def _check_official_weights(payload: dict, current: dict, path, allow_other_weights) -> None:
    """The official adapters carry no fingerprint; they expect real (``openai``) weights."""
    expected = payload["official"].get("expects_weights")
    if expected == "random" or not current.get("weights_random"):
        return
    message = (f"official checkpoint {path} expects {payload['backbone']['model_name']} with "
               f"'{expected}' weights, but random weights are loaded.")
    _other_weights(payload, message, "Give the real weights (--clip-checkpoint "
                   "ViT-L-14-336px.pt, or let open_clip fetch 'openai'), or evaluate anyway "
                   "with --allow-other-weights.", allow_other_weights)


def _other_weights(payload: dict, message: str, fix: str, allowed: bool) -> None:
    """Adapters meet other CLIP weights than theirs: refused, or (``allowed``) a loud warning
    kept in ``payload["weights_warning"]``."""
    if not allowed:
        raise CheckpointError(f"{message} {fix}")
    payload["weights_warning"] = f"{message} Loaded anyway (allow_other_weights): the " \
                                 "numbers do not measure the trained model."
    warnings.warn(f"WARNING: {payload['weights_warning']}", stacklevel=4)


def _check_shapes(model: MVFA, adapters: dict, path) -> None:
    """Name every adapter tensor that is missing, extra or of another shape."""
    expected = {name: tuple(t.shape) for name, t in model.banks.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in adapters.items()}
    problems = [f"{name} is missing" for name in expected if name not in found]
    problems += [f"{name} is not an adapter of this model"
                 for name in found if name not in expected]
    problems += [f"{name} is {found[name]} but the model needs {shape}"
                 for name, shape in expected.items() if name in found and found[name] != shape]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"checkpoint {path} does not fit this model: "
                              f"{'; '.join(problems[:3])}{more}. It was damaged or edited; "
                              "retrain it with `mvfa-lite train`.")


def check_normal_shots(payload: dict, path: str | Path) -> list[str]:
    """The checkpoint's normal shots, after checking that each still exists and is unchanged."""
    shots, hashes = payload["normal_shots"], payload["normal_shot_sha256"]
    missing = [p for p in shots if not Path(p).is_file()]
    if missing:
        raise DataError(f"the normal shots of checkpoint {path} are gone (first: {missing[0]}); "
                        "the few-shot memory bank is built from them. Restore them, retrain, or "
                        "use --zero-shot-only.")
    changed = [p for p, sha in zip(shots, hashes) if file_sha256(p) != sha]
    if changed:
        raise DataError(f"the normal shot {changed[0]} has changed since checkpoint {path} was "
                        f"trained ({len(changed)} of {len(shots)} files differ from their "
                        "recorded SHA-256); the few-shot memory bank would silently change. "
                        "Restore the original files, retrain, or use --zero-shot-only.")
    return shots
