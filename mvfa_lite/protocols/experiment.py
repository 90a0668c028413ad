"""End-to-end runs: the few lines a notebook or the CLI needs for a whole experiment:
train (:func:`run_few_shot`, :func:`run_zero_shot`), score a labelled split again
(:func:`evaluate_checkpoint`) and score a folder of the user's images (:func:`predict`).

This is where the protocol decides which data plays which role:

* shots come from the support split (BMAD: ``valid``); when the support and test splits
  are the same folder (the embedded sets), the shots are split off and the rest is tested;
* the epoch is selected on the **test** set under the paper protocol (as the official code
  does), and on validation data under the corrected one: the support split's images that
  are not shots, when they hold both classes; otherwise the last epoch is kept.

Nothing is trained before every input has been checked: the settings (:func:`preflight`:
their values, the device, the image size against the backbone's patch, the prompt set), the
output folder (writable; created once training starts, so a refused run leaves no trace),
both classes in the test split, and every image and mask opened once
(:meth:`ADDataset.check`). The results are written into a staging folder and swapped in
whole (:mod:`mvfa_lite.outputs`), so a run killed at any moment leaves the previous complete
result; its training continues after the last finished epoch when run again with the same
settings and data (:mod:`.training_state`).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import MVFAConfig
from ..data import catalogue
from ..data.folder import ImageFolder
from ..data.images import image_to_tensor, load_image, overlay
from ..data.layout import ADDataset
from ..data.shots import normal_bank_images, select_shots, shot_set, split_off_shots
from ..errors import CheckpointError, ConfigError, DataError, DataWarning
from ..method.backbone import patch_size
from ..method.model import MVFA
from ..method.prompts import PROMPT_SETS, object_name
from ..outputs import EVALUATE_FILES, PREDICT_FILES, TRAIN_FILES, OutputFolder, write_json
from ..runtime import resolve_compile, resolve_device, resolve_precision, seed_everything
from .checkpoint import (
    check_normal_shots,
    load_adapters,
    read_checkpoint,
    save_checkpoint,
)
from .evaluate import (
    Scores,
    build_memory_bank,
    compute_metrics,
    save_scores,
    score_dataset,
)
from .metrics import pixel_metrics_absent
from .official_checkpoint import is_official_file, official_payload
from .train import TrainResult, train_few_shot, train_zero_shot
from .training_state import STATE_FILE


@dataclass
class Run:
    """What an experiment produced; ``summary`` is what gets written to metrics.json.
    ``train`` is None for :func:`evaluate_checkpoint`."""
    model: MVFA
    metrics: dict
    scores: Scores
    train: TrainResult | None
    summary: dict = field(default_factory=dict)


def preflight(config: MVFAConfig) -> MVFAConfig:
    """The checks that need more than the config's values, made first by every entry point:
    the device exists on this machine, the image holds at least one patch of the backbone,
    the prompt set exists. Raises ConfigError naming the setting and the fix."""
    config.validate()
    resolve_device(config.device)
    low = smallest_side(config)
    if config.image_size < low:
        raise ConfigError(f"image_size = {config.image_size} (--image-size) is not possible: "
                          f"it must be a whole number of pixels >= {low}"
                          + (f", the patch size of {config.model_name}." if low > 1 else "."))
    if config.prompts not in PROMPT_SETS:
        raise ConfigError(f"prompts = {config.prompts!r} (--prompts) is not a prompt set: "
                          f"choose one of {', '.join(sorted(PROMPT_SETS))}.")
    return config


def build_model(config: MVFAConfig, clip_checkpoint=None) -> MVFA:
    """The model on its device, its blocks compiled where ``config.compile`` says so."""
    model = MVFA.from_config(config, clip_checkpoint).to(resolve_device(config.device))
    precision = resolve_precision(config.precision, model.device)
    facts = dict(model=config.model_name, image_size=config.image_size, precision=precision,
                 device=model.device.type)
    if resolve_compile(config.compile, facts, lambda: model.backbone.compile_timing(
            precision, model.levels[0])):
        model.backbone.compile_blocks()
    return model


def weights_banner(model: MVFA) -> str:
    """One line saying which weights produced the numbers (printed and saved everywhere)."""
    identity = model.backbone.identity
    line = f"backbone {identity['model_name']}, weights {identity['weights']}"
    if identity["weights_random"]:
        line += " -- RANDOM WEIGHTS: these numbers test the code, they are not results"
    return line


def smallest_side(config: MVFAConfig) -> int:
    """The smallest usable image side: one patch of the backbone."""
    return patch_size(config.model_name) or 1


def few_shot_data(config: MVFAConfig, root, support_split: str = "valid",
                  test_split: str = "test", seed_file=None, iterate: int = 0,
                  progress: bool = True):
    """-> (support, test, selection set or None) following the module docstring's rules;
    every image of the splits used is opened once first (ADDataset.check)."""
    side = smallest_side(config)
    if support_split == test_split:
        if seed_file is not None:
            raise DataError("a seed file selects shots from a separate support split; with "
                            f"support split = test split ({test_split!r}) the shots are drawn "
                            "at random. Drop --seed-file or give a different --support-split.")
        whole = ADDataset(root, test_split, config.image_size)
        support, test = split_off_shots(whole, config.shots, config.seed, config.normal_only)
        whole.check(side, progress)
        validation = None
    else:
        pool = ADDataset(root, support_split, config.image_size)
        chosen = select_shots(pool, config.shots, seed=config.seed, seed_file=seed_file,
                              iterate=iterate, normal_only=config.normal_only)
        test = ADDataset(root, test_split, config.image_size).require_both_classes()
        pool.check(side, progress)
        test.check(side, progress)
        support = pool.subset(chosen)
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
    preflight(config)
    output = OutputFolder(out, "train", TRAIN_FILES, inputs=[root]) if out is not None else None
    seed_everything(config.seed)
    support, test, selection = few_shot_data(config, root, support_split, test_split,
                                             seed_file, iterate, progress)
    model = build_model(config, clip_checkpoint)
    if progress:
        print(weights_banner(model))
    started = time.perf_counter()
    state = output.path / STATE_FILE if output else None
    result, shots = train_few_shot(model, support, selection_set=selection, progress=progress,
                                   state_file=state)
    train_seconds = time.perf_counter() - started
    if selection is test and result.best_scores is not None:
        scores = result.best_scores          # the test scores of the kept adapters, as selected
    else:
        bank = build_memory_bank(model, normal_bank_images(shots))
        scores = score_dataset(model, test, model.text_features(object_name(test.name)), bank,
                               progress=progress, description=f"testing {test.name}")
    run = _finish(model, scores, result, output, save_maps, save_adapters, setting="few-shot",
                  dataset=test.name, dataset_root=_root(test),
                  normal_shots=[item.image_path.resolve().as_posix() for item in support.items
                                if item.label == 0],
                  selection=_describe(selection, test), train_seconds=train_seconds)
    if state:
        state.unlink(missing_ok=True)       # the results are written: nothing to resume
    return run


def run_zero_shot(config: MVFAConfig, target_root, source_roots: list, *,
                  source_split: str = "test", test_split: str = "test", out=None,
                  clip_checkpoint=None, progress: bool = True, save_maps: bool = False,
                  save_adapters: bool = True) -> Run:
    """Leave-one-dataset-out: train on the source datasets, test on the unseen target."""
    preflight(config)
    output = OutputFolder(out, "train", TRAIN_FILES, inputs=[target_root, *source_roots]) \
        if out is not None else None
    seed_everything(config.seed)
    test = ADDataset(target_root, test_split, config.image_size)
    sources = [ADDataset(root, source_split, config.image_size) for root in source_roots]
    if any(s.name == test.name for s in sources):
        raise DataError(f"the target {test.name} is among the source datasets; leave it out "
                        "(zero-shot means the target is never seen in training).")
    for dataset in (test.require_both_classes(), *sources):
        dataset.check(smallest_side(config), progress)
    model = build_model(config, clip_checkpoint)
    if progress:
        print(weights_banner(model))
    selection = test if config.selection == "test" else None
    started = time.perf_counter()
    state = output.path / STATE_FILE if output else None
    result = train_zero_shot(model, sources, target_name=test.name, selection_set=selection,
                             progress=progress, state_file=state)
    train_seconds = time.perf_counter() - started
    if selection is test and result.best_scores is not None:
        scores = result.best_scores          # the test scores of the kept adapters, as selected
    else:
        scores = score_dataset(model, test, model.text_features(object_name(test.name)),
                               progress=progress, description=f"testing {test.name}")
    run = _finish(model, scores, result, output, save_maps, save_adapters, setting="zero-shot",
                  dataset=test.name, dataset_root=_root(test), sources=[s.name for s in sources],
                  selection=_describe(selection, test), train_seconds=train_seconds)
    if state:
        state.unlink(missing_ok=True)
    return run


def _describe(selection, test) -> str:
    if selection is None:
        return "none (last epoch)"
    return "test set (paper protocol)" if selection is test else "validation images"


def _root(test) -> str:
    """The test set's folder as it was resolved (result.json records it)."""
    return Path(test.root).resolve().as_posix()


def _finish(model: MVFA, scores: Scores, result: TrainResult | None,
            output: OutputFolder | None, save_maps: bool, save_adapters: bool, **facts) -> Run:
    metrics = compute_metrics(scores)
    summary = dict(facts, metrics=metrics, pixel_metrics_absent=pixel_metrics_absent(scores.masks),
                   protocol=model.config.protocol,
                   precision=resolve_precision(model.config.precision, model.device),
                   compiled=model.backbone.compiled,
                   weights=weights_banner(model), backbone=model.identity,
                   config=model.config.to_dict())
    if result is not None:
        summary.update(best_epoch=result.best_epoch, history=result.history)
    if output is not None:
        with output.writing() as folder:     # swapped in whole once every file is written
            if save_adapters:
                save_checkpoint(model, folder / "adapters.pth", dataset=facts["dataset"],
                                normal_shots=facts.get("normal_shots", []),
                                calibration=calibration(scores, metrics))
            save_scores(scores, folder, maps=save_maps)
            write_json(folder / "metrics.json", summary)
    return Run(model, metrics, scores, result, summary)


def read_any(checkpoint, official: dict | None = None) -> dict:
    """An mvfa-lite checkpoint's entries, or an official MVFA .pth (detected by its keys) as
    such entries (official_checkpoint.official_payload). ``official``: the options of that
    function (data, seed_file, shots, model_name, setting); the setting defaults to
    few-shot when a seed file is given, else zero-shot (no memory bank)."""
    if not is_official_file(checkpoint):
        return read_checkpoint(checkpoint)
    options = dict(official or {})
    if not options.get("setting"):
        options["setting"] = "few-shot" if options.get("seed_file") else "zero-shot"
    return official_payload(checkpoint, **{k: v for k, v in options.items() if v is not None})


def calibration(scores: Scores, metrics: dict) -> dict:
    """What ``predict`` needs to score one image on its own, fixed at train time on the test
    split the run evaluated (the one labelled set every run has with both classes; the
    validation images are often too few or absent): each branch's [min, max] there, and the
    image-level F1-max threshold on those scores (pixel-level too, when there are masks).
    The threshold is fit on those labelled images; a yes/no on them is therefore optimistic.
    """
    return dict(bounds=scores.bounds, threshold=metrics["image_f1_threshold"],
                pixel_threshold=metrics.get("pixel_f1_threshold"), images=len(scores.paths),
                fitted_on="the test split this run evaluated (F1-max threshold)")


def load_trained(checkpoint, clip_checkpoint=None, device: str = "auto", with_bank: bool = True,
                 allow_other_weights: bool = False, official: dict | None = None):
    """A trained model and its memory bank (rebuilt from the normal shots listed in the
    checkpoint, refused when one has changed; None for zero-shot checkpoints or
    ``with_bank=False``). Other CLIP weights than the checkpoint's are refused unless
    ``allow_other_weights`` (then with a warning, see checkpoint.load_adapters).
    ``official``: how to read an official MVFA .pth (:func:`read_any`).

    Returns (model, bank, checkpoint payload)."""
    payload = read_any(checkpoint, official)
    try:
        config = MVFAConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {checkpoint} has an unusable config entry ({error}); "
                              "it was damaged or edited. Retrain it with `mvfa-lite train`."
                              ) from None
    # the caller's device, not the saved one; scoring once does not repay a compile
    config = preflight(config.replace(device=device, compile="off"))
    model = build_model(config, clip_checkpoint)
    load_adapters(model, checkpoint, allow_other_weights, payload, from_its_config=True)
    model.eval()
    bank = None
    if with_bank and payload["normal_shots"]:
        shots = check_normal_shots(payload, checkpoint)
        bank = build_memory_bank(model, _normal_shot_images(shots, config))
    return model, bank, payload


def evaluate_checkpoint(checkpoint, root, *, split: str | None = None, out=None,
                        clip_checkpoint=None, device: str = "auto", zero_shot_only: bool = False,
                        allow_other_weights: bool = False, save_maps: bool = False,
                        progress: bool = True, official: dict | None = None) -> Run:
    """Score a labelled split with trained adapters. ``root``: a dataset folder or a shipped
    set's name; ``split``: default the set's test split. With ``out``: writes metrics.json
    and scores.csv (+ maps.npz) there. ``official``: for an official MVFA .pth, see
    :func:`read_any` (few-shot shots come from ``root``'s support split by default)."""
    folder = catalogue.path(root)
    output = OutputFolder(out, "evaluate", EVALUATE_FILES, inputs=[folder]) \
        if out is not None else None
    official = dict(official or {})
    official.setdefault("data", folder)
    official.setdefault("support_split", catalogue.splits(root)[0])
    model, bank, payload = load_trained(checkpoint, clip_checkpoint, device,
                                        with_bank=not zero_shot_only,
                                        allow_other_weights=allow_other_weights,
                                        official=official)
    if progress:
        print(weights_banner(model))
    test = ADDataset(folder, split or catalogue.splits(root)[1], model.config.image_size)
    test.require_both_classes().check(smallest_side(model.config), progress)
    scores = score_dataset(model, test, model.text_features(object_name(test.name)), bank,
                           progress=progress, description=f"testing {test.name}")
    return _finish(model, scores, None, output, save_maps, save_adapters=False,
                   dataset=test.name, dataset_root=_root(test), checkpoint=str(checkpoint),
                   weights_warning=payload.get("weights_warning"))


def predict(checkpoint, images, *, out, object_word: str | None = None, clip_checkpoint=None,
            device: str = "auto", allow_other_weights: bool = False, relative: bool = False,
            progress: bool = True, official: dict | None = None) -> Scores:
    """Heat maps and scores for a folder of unlabelled images (or one image): one overlay
    PNG per image and scores.csv in ``out``. Scores are calibrated: normalised with the
    branch statistics the checkpoint fixed at train time (:func:`calibration`), so each
    image is judged on its own, and scores.csv says ``anomalous`` yes/no at the checkpoint's
    threshold. ``relative=True`` (or a checkpoint without calibration, which warns)
    min-max normalises over the images given instead, with no yes/no. ``object_word``: for
    the prompts (default: the checkpoint's dataset). ``official``: for an official MVFA .pth
    (:func:`read_any`; few-shot needs its ``data``). For research use only, not for
    clinical use."""
    output = OutputFolder(out, "predict", PREDICT_FILES, inputs=[images])
    model, bank, payload = load_trained(checkpoint, clip_checkpoint, device,
                                        allow_other_weights=allow_other_weights,
                                        official=official)
    if progress:
        print(weights_banner(model))
    fixed = payload.get("calibration")
    if not relative and not fixed:
        warnings.warn(f"{checkpoint} holds no calibration (trained before mvfa-lite kept one): "
                      "scores are relative to the images given, with no yes/no; retrain "
                      "for calibrated scores", DataWarning)
    fixed = None if relative else fixed
    folder = ImageFolder(images, model.config.image_size, exclude=[output.path])
    folder.check(smallest_side(model.config), progress)
    text = model.text_features(object_word or object_name(payload.get("dataset", "")))
    scores = score_dataset(model, folder, text, bank, has_masks=False, progress=progress,
                           description="predicting", bounds=fixed and fixed["bounds"])
    with output.writing() as staging:
        pictures = [f"{i:05d}_{Path(path).stem}.png" for i, path in enumerate(scores.paths)]
        for i, picture in enumerate(pictures):
            overlay(folder[i]["image"], scores.maps[i]).save(staging / picture)
        save_scores(scores, staging, overlays=pictures,
                    threshold=fixed["threshold"] if fixed else None)
    return scores


def _normal_shot_images(paths: list[str], config: MVFAConfig) -> torch.Tensor:
    """The memory bank's images, reloaded from the checkpoint's list of normal shots."""
    images = torch.stack([image_to_tensor(load_image(p), config.image_size) for p in paths])
    blank = torch.zeros(len(paths), config.image_size, config.image_size)
    return shot_set(images, blank, torch.zeros(len(paths)), config.augment).images
