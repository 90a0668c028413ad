"""End-to-end runs: the few lines a notebook or the CLI needs for a whole experiment.

This is where the protocol decides which data plays which role:

* shots come from the support split (BMAD: ``valid``); when the support and test splits
  are the same folder (the embedded sets), the shots are split off and the rest is tested;
* the epoch is selected on the **test** set under the paper protocol (as the official code
  does), and on validation data under the corrected one: the support split's images that
  are not shots, when they hold both classes; otherwise the last epoch is kept.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import load_adapters, read_checkpoint, save_checkpoint
from .config import MVFAConfig
from .data import ADDataset, image_to_tensor, load_image, select_shots, split_off_shots
from .errors import DataError
from .evaluate import Scores, build_memory_bank, compute_metrics, save_scores, score_dataset
from .model import MVFA
from .prompts import object_name
from .results import write_json
from .runtime import resolve_device, seed_everything
from .train import TrainResult, normal_bank_images, shot_set, train_few_shot, train_zero_shot


@dataclass
class Run:
    """What an experiment produced; ``summary`` is what gets written to metrics.json."""
    model: MVFA
    metrics: dict
    scores: Scores
    train: TrainResult
    summary: dict = field(default_factory=dict)


def build_model(config: MVFAConfig, clip_checkpoint=None) -> MVFA:
    model = MVFA.from_config(config, clip_checkpoint)
    return model.to(resolve_device(config.device))


def weights_banner(model: MVFA) -> str:
    """One line saying which weights produced the numbers (printed and saved everywhere)."""
    identity = model.backbone.identity
    line = f"backbone {identity['model_name']}, weights {identity['weights']}"
    if identity["weights_random"]:
        line += " -- RANDOM WEIGHTS: these numbers test the code, they are not results"
    return line


def few_shot_data(config: MVFAConfig, root, support_split: str = "valid",
                  test_split: str = "test", seed_file=None, iterate: int = 0):
    """-> (support, test, selection set or None) following the module docstring's rules."""
    if support_split == test_split:
        if seed_file is not None:
            raise DataError("a seed file selects shots from a separate support split; with "
                            f"support split = test split ({test_split!r}) the shots are drawn "
                            "at random. Drop --seed-file or give a different --support-split.")
        support, test = split_off_shots(ADDataset(root, test_split, config.image_size),
                                        config.shots, config.seed, config.normal_only)
        validation = None
    else:
        pool = ADDataset(root, support_split, config.image_size)
        chosen = select_shots(pool, config.shots, seed=config.seed, seed_file=seed_file,
                              iterate=iterate, normal_only=config.normal_only)
        support = pool.subset(chosen)
        test = ADDataset(root, test_split, config.image_size)
        rest = pool.subset([i for i in range(len(pool)) if i not in set(chosen)])
        validation = rest if rest.num_normal and rest.num_abnormal else None
    selection = test if config.selection == "test" else validation
    return support, test, selection


def run_few_shot(config: MVFAConfig, root, *, support_split: str = "valid",
                 test_split: str = "test", seed_file=None, iterate: int = 0, out=None,
                 clip_checkpoint=None, progress: bool = True, save_maps: bool = False,
                 save_adapters: bool = True) -> Run:
    """Few-shot protocol on one dataset: train on the shots, evaluate on the test split.

    With ``out``: writes metrics.json, scores.csv (+ maps.npz) and adapters.pth there."""
    seed_everything(config.seed)
    support, test, selection = few_shot_data(config, root, support_split, test_split,
                                             seed_file, iterate)
    model = build_model(config, clip_checkpoint)
    if progress:
        print(weights_banner(model))
    started = time.perf_counter()
    result, shots = train_few_shot(model, support, selection_set=selection, progress=progress)
    train_seconds = time.perf_counter() - started
    if selection is test and result.best_scores is not None:
        scores = result.best_scores          # the test scores of the kept adapters, as selected
    else:
        bank = build_memory_bank(model, normal_bank_images(shots))
        scores = score_dataset(model, test, model.text_features(object_name(test.name)), bank,
                               progress=progress, description=f"testing {test.name}")
    run = _finish(model, scores, result, out, save_maps, save_adapters, setting="few-shot",
                  dataset=test.name,
                  normal_shots=[item.image_path.resolve().as_posix() for item in support.items
                                if item.label == 0],
                  selection=_describe(selection, test), train_seconds=train_seconds)
    return run


def run_zero_shot(config: MVFAConfig, target_root, source_roots: list, *,
                  source_split: str = "test", test_split: str = "test", out=None,
                  clip_checkpoint=None, progress: bool = True, save_maps: bool = False,
                  save_adapters: bool = True) -> Run:
    """Leave-one-dataset-out: train on the source datasets, test on the unseen target."""
    seed_everything(config.seed)
    test = ADDataset(target_root, test_split, config.image_size)
    sources = [ADDataset(root, source_split, config.image_size) for root in source_roots]
    if any(s.name == test.name for s in sources):
        raise DataError(f"the target {test.name} is among the source datasets; leave it out "
                        "(zero-shot means the target is never seen in training).")
    model = build_model(config, clip_checkpoint)
    if progress:
        print(weights_banner(model))
    selection = test if config.selection == "test" else None
    started = time.perf_counter()
    result = train_zero_shot(model, sources, target_name=test.name, selection_set=selection,
                             progress=progress)
    train_seconds = time.perf_counter() - started
    if selection is test and result.best_scores is not None:
        scores = result.best_scores          # the test scores of the kept adapters, as selected
    else:
        scores = score_dataset(model, test, model.text_features(object_name(test.name)),
                               progress=progress, description=f"testing {test.name}")
    return _finish(model, scores, result, out, save_maps, save_adapters, setting="zero-shot",
                   dataset=test.name, sources=[s.name for s in sources],
                   selection=_describe(selection, test), train_seconds=train_seconds)


def _describe(selection, test) -> str:
    if selection is None:
        return "none (last epoch)"
    return "test set (paper protocol)" if selection is test else "validation images"


def _finish(model: MVFA, scores: Scores, result: TrainResult, out, save_maps: bool,
            save_adapters: bool, **facts) -> Run:
    metrics = compute_metrics(scores)
    summary = dict(facts, metrics=metrics, protocol=model.config.protocol,
                   weights=weights_banner(model), backbone=model.identity,
                   best_epoch=result.best_epoch, history=result.history,
                   config=model.config.to_dict())
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if save_adapters:
            save_checkpoint(model, out / "adapters.pth", dataset=facts["dataset"],
                            normal_shots=facts.get("normal_shots", []))
        save_scores(scores, out, maps=save_maps)
        write_json(out / "metrics.json", summary)
    return Run(model, metrics, scores, result, summary)


def load_trained(checkpoint, clip_checkpoint=None, device: str = "auto", with_bank: bool = True):
    """A trained model and its memory bank (rebuilt from the normal shots listed in the
    checkpoint; None for zero-shot checkpoints or ``with_bank=False``).

    Returns (model, bank, checkpoint payload)."""
    payload = read_checkpoint(checkpoint)
    config = MVFAConfig.from_dict({**payload["config"], "device": device})
    model = build_model(config, clip_checkpoint)
    load_adapters(model, checkpoint)
    model.eval()
    bank = None
    if with_bank and payload.get("normal_shots"):
        bank = build_memory_bank(model, _normal_shot_images(payload["normal_shots"], config))
    return model, bank, payload


def _normal_shot_images(paths: list[str], config: MVFAConfig) -> torch.Tensor:
    """The memory bank's images, reloaded from the checkpoint's list of normal shots."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"the checkpoint's normal shots are gone (first: {missing[0]}); the "
                        "few-shot memory bank is built from them. Restore them, retrain, or "
                        "use --zero-shot-only.")
    images = torch.stack([image_to_tensor(load_image(p), config.image_size) for p in paths])
    blank = torch.zeros(len(paths), config.image_size, config.image_size)
    return shot_set(images, blank, torch.zeros(len(paths)), config.augment).images
