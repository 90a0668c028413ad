"""The MVFA authors' trained adapters (the official ``.pth`` files) in mvfa-lite.

The official scripts (train_few.py, train_zero.py) save ``{'seg_adapters': state_dict,
'det_adapters': state_dict}`` and nothing else: no backbone, no weights, no shots. What
those files only make sense with is fixed by the official code, and is recorded here when a
file is read (directly by ``evaluate``/``predict``, or once by ``import-official``):

* the backbone: ViT-L-14-336 run at 240 px, with OpenAI's weights (``openai``) expected;
* the official behaviour: ``MVFAConfig(protocol="paper")`` (plain GELU, no CLIP
  normalisation, CLS rows in the memory bank, the official image-score rule), fp32;
* few-shot: the memory bank is the k normal shots that the official seed file names
  (``dataset/fewshot_seed/<Obj>/<k>-shot.txt``, draw 0, as test_few.py builds it), taken
  from the support split (``valid``) of the dataset;
* the source file's SHA-256.

Official names -> mvfa-lite's (:class:`~mvfa_lite.method.adapters.AdapterBanks`):
``seg_adapters.<l>.fc1.0.weight`` -> ``seg.<l>.down.0.weight``, ``fc2`` -> ``up``; the last
level's ``fc2`` never gets a gradient in the official code and mvfa-lite has none.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import MVFAConfig
from ..data.layout import ADDataset
from ..data.shots import select_shots
from ..errors import CheckpointError
from ..method.backbone import TINY_CONFIG, TINY_MODEL
from ..outputs import atomic_write
from .checkpoint import FORMAT, file_sha256

OFFICIAL_MODEL = "ViT-L-14-336"
OFFICIAL_IMAGE_SIZE = 240
OFFICIAL_KEYS = ("seg_adapters", "det_adapters")
SETTINGS = ("few-shot", "zero-shot")
BANKS = {"seg_adapters": "seg", "det_adapters": "det"}


def is_official(payload) -> bool:
    """True for the official format: exactly the two adapter state dicts."""
    return isinstance(payload, dict) and set(payload) == set(OFFICIAL_KEYS) and \
        all(isinstance(payload[key], dict) for key in OFFICIAL_KEYS)


def is_official_file(path) -> bool:
    """True when ``path`` is an official MVFA .pth (unreadable files: False; the mvfa-lite
    reader then says what is wrong with them)."""
    try:
        return is_official(torch.load(path, map_location="cpu", weights_only=True))
    except Exception:
        return False


def official_config(model_name: str = OFFICIAL_MODEL, shots: int = 4) -> MVFAConfig:
    """The settings the official adapters were trained and scored with."""
    return MVFAConfig(model_name=model_name, protocol="paper", precision="fp32",
                      pretrained="random" if model_name == TINY_MODEL else "openai",
                      image_size=OFFICIAL_IMAGE_SIZE, shots=shots)


def expected_dims(model_name: str) -> tuple[int, int]:
    """(stream width W, joint width D) of ``model_name``, without building it."""
    if model_name == TINY_MODEL:
        return TINY_CONFIG["vision_cfg"]["width"], TINY_CONFIG["embed_dim"]
    import open_clip
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise CheckpointError(f"--model {model_name} is not an open_clip model; the official "
                              f"adapters are for {OFFICIAL_MODEL}.")
    return config["vision_cfg"]["width"], config["embed_dim"]


def adapters_from_official(state: dict, path, model_name: str = OFFICIAL_MODEL) -> dict:
    """The official state dicts -> mvfa-lite's AdapterBanks state dict, checked against the
    shapes ``model_name`` needs (one line naming the file and the fix)."""
    width, joint = expected_dims(model_name)
    levels = sorted(int(key.split(".")[0]) for key in state["seg_adapters"]
                    if key.endswith(".fc1.0.weight"))
    fix = (f"It was saved for another backbone or damaged; the released MVFA adapters are for "
           f"{OFFICIAL_MODEL} (--model {OFFICIAL_MODEL}); pass --model with the backbone it was "
           "trained on.")
    if not levels or levels != list(range(len(levels))):
        raise CheckpointError(f"official checkpoint {path} holds no numbered adapters "
                              f"(seg_adapters.<level>.fc1.0.weight). {fix}")
    adapters = {}
    for official, ours in BANKS.items():
        for level in levels:
            names = {"fc1": "down"} if level == levels[-1] else {"fc1": "down", "fc2": "up"}
            for theirs, mine in names.items():
                key = f"{level}.{theirs}.0.weight"
                shape = (joint, width) if theirs == "fc1" else (width, joint)
                value = state[official].get(key)
                if not isinstance(value, torch.Tensor):
                    raise CheckpointError(f"official checkpoint {path} lacks {official}.{key}. "
                                          f"{fix}")
                if tuple(value.shape) != shape:
                    raise CheckpointError(
                        f"official checkpoint {path}: {official}.{key} is "
                        f"{tuple(value.shape)} but {model_name} needs {shape} (stream width "
                        f"{width}, joint width {joint}). {fix}")
                adapters[f"{ours}.{level}.{mine}.0.weight"] = value.detach().float().clone()
    return adapters


def normal_shots_from_seed_file(data, seed_file, shots: int, support_split: str = "valid",
                                iterate: int = 0) -> list[str]:
    """The normal shots the official test_few.py builds its memory bank from."""
    if seed_file is None:
        raise CheckpointError("a few-shot official checkpoint needs the official seed file "
                              "that names its shots (--seed-file dataset/fewshot_seed/<Obj>/"
                              "<k>-shot.txt of the official checkout) and the dataset.")
    pool = ADDataset(data, support_split, OFFICIAL_IMAGE_SIZE)
    chosen = select_shots(pool, shots, seed_file=seed_file, iterate=iterate, normal_only=True)
    return [pool.items[i].image_path.resolve().as_posix() for i in chosen]


def official_payload(path, *, setting: str, data=None, dataset: str | None = None,
                     shots: int = 4, seed_file=None, support_split: str = "valid",
                     iterate: int = 0, model_name: str = OFFICIAL_MODEL) -> dict:
    """An official .pth as the entries of an mvfa-lite checkpoint (module docstring).
    ``data``: the dataset folder (few-shot: the shots come from its ``support_split``);
    ``dataset``: the name recorded for the prompts (default: the folder's)."""
    path = Path(path)
    if setting not in SETTINGS:
        raise CheckpointError(f"--setting {setting!r}: choose few-shot or zero-shot.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        state = None
    if not is_official(state):
        raise CheckpointError(f"{path} is not an official MVFA checkpoint (a file holding only "
                              "'seg_adapters' and 'det_adapters', as train_few.py and "
                              "train_zero.py save them).")
    config = official_config(model_name, shots)
    adapters = adapters_from_official(state, path, model_name)
    levels = len({key.split(".")[1] for key in adapters})
    normal_shots = normal_shots_from_seed_file(data, seed_file, shots, support_split, iterate) \
        if setting == "few-shot" else []
    if dataset is None and data is not None:
        dataset = ADDataset._default_name(Path(data))
    return dict(format=FORMAT, adapters=adapters, config=config.to_dict(),
                backbone=dict(model_name=model_name, pretrained=config.pretrained,
                              image_size=OFFICIAL_IMAGE_SIZE, levels_count=levels),
                clip_fingerprint="official", normal_shots=normal_shots,
                normal_shot_sha256=[file_sha256(p) for p in normal_shots],
                dataset=dataset or "",
                official=dict(source=path.resolve().as_posix(), sha256=file_sha256(path),
                              setting=setting, shots=shots if setting == "few-shot" else None,
                              seed_file=None if seed_file is None else
                              Path(seed_file).resolve().as_posix(),
                              expects_weights=config.pretrained))


def import_official(path, out, **options) -> Path:
    """``mvfa-lite import-official``: convert once; ``options``: those of :func:`official_payload`."""
    payload = official_payload(path, **options)
    with atomic_write(out) as temporary:
        torch.save(payload, temporary)
    return Path(out)


def banks_from_official(model, state: dict) -> None:
    """Load official adapters ({'seg_adapters', 'det_adapters'} state dicts) into ``model``."""
    model.banks.load_state_dict(adapters_from_official(state, "(in memory)",
                                                       model.config.model_name))


def adapter_state(model) -> dict:
    """mvfa-lite's adapter weights under the official names (the inverse of
    :func:`banks_from_official`)."""
    state = {}
    for ours, bank in ((model.banks.seg, "seg_adapters"), (model.banks.det, "det_adapters")):
        state[bank] = {}
        for level, adapter in enumerate(ours):
            state[bank][f"{level}.fc1.0.weight"] = adapter.down[0].weight.detach().cpu().clone()
            if adapter.up is not None:
                state[bank][f"{level}.fc2.0.weight"] = adapter.up[0].weight.detach().cpu().clone()
    return state
