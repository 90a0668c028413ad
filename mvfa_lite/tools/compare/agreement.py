"""How closely the two programs agree, and the pass marks: scores and AUROC matched image by
image, the losses on fixed inputs, the official data order recovered from fingerprints, and
the training epoch measured against the one-ulp rounding yardstick."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ...data.shots import ShotSet
from ...method.losses import dice_loss, focal_loss
from . import driver

# pass marks (paper protocol, fp32)
SCORE_PEARSON, AUROC_TOLERANCE = 0.999, 1e-3
# a checkpoint saved by the official code, scored by both programs: the same model
CHECKPOINT_PEARSON, CHECKPOINT_AUROC_TOLERANCE = 0.99999, 1e-6
# training: the first steps, before rounding has grown, agree to this; after them the two
# programs may drift apart by up to ROUNDING_FACTOR times what one ulp makes of mvfa-lite
# (the median |difference| of the step losses over the epoch)
EXACT_STEPS, STEP_TOLERANCE, ROUNDING_FACTOR = 8, 1e-5, 2.0


def pearson(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def agreement(official, ours) -> dict:
    official, ours = np.asarray(official, np.float64), np.asarray(ours, np.float64)
    return {"pearson": pearson(official, ours),
            "max_abs_diff": float(np.abs(official - ours).max())}


def official_scores(record: dict, has_masks: bool, image_first: bool = False) -> dict:
    """What the official test passed to roc_auc_score: pixel scores (N*S*S) first when the set
    has masks, then image scores (N); test_zero.py (``image_first``) the other way round."""
    calls = record["auroc"][-2:] if has_masks else record["auroc"][-1:]
    if image_first and has_masks:
        return {"image": calls[0], "pixel": calls[1]}
    scores = {"image": calls[-1]}
    if has_masks:
        scores["pixel"] = calls[0]
    return scores


def compare_scores(official: dict, test_paths: list[str], scores, has_masks: bool,
                   marks=(SCORE_PEARSON, AUROC_TOLERANCE)) -> dict:
    """Image (and pixel) scores and AUROC of both programs, the images matched by file name;
    ``marks``: the pass marks (Pearson at least, |dAUROC| at most)."""
    ours_index = {Path(p).name: i for i, p in enumerate(scores.paths)}
    order = [ours_index[Path(p).name] for p in test_paths]
    result = {}
    ours_image = scores.image_scores[order].numpy()
    result["image"] = {**agreement(official["image"]["y_score"], ours_image),
                       "auroc_official": official["image"]["value"],
                       "auroc_ours": float(roc_auc_score(scores.labels[order].numpy(), ours_image))}
    if has_masks:
        ours_maps = scores.maps[order].numpy().ravel()
        masks = (scores.masks[order].numpy().ravel() > 0.5).astype(int)
        result["pixel"] = {**agreement(official["pixel"]["y_score"], ours_maps),
                           "auroc_official": official["pixel"]["value"],
                           "auroc_ours": float(roc_auc_score(masks, ours_maps))}
    for part in result.values():
        part["auroc_diff"] = abs(part["auroc_official"] - part["auroc_ours"])
        part["passed"] = part["pearson"] >= marks[0] and part["auroc_diff"] <= marks[1]
    return result


def fixed_loss_inputs(size: int = 48, seed: int = 0) -> dict:
    """Probabilities (2, 2, S, S) and binary masks (2, S, S) for the losses on fixed inputs."""
    generator = torch.Generator().manual_seed(seed)
    probs = torch.randn(2, 2, size, size, generator=generator).mul(3).softmax(dim=1)
    masks = (torch.rand(2, size, size, generator=generator) > 0.7).float()
    masks[1] = 0                                       # a normal image: an empty mask
    return {"probs": probs, "masks": masks}


def data_order(official_fingerprints: torch.Tensor, shots: ShotSet, tolerance: float = 1e-3):
    """The official training order as indices into ``shots`` (None when it cannot be matched
    one to one), and the largest fingerprint distance of the match."""
    ours = driver.fingerprint(shots.images)
    distance = torch.cdist(official_fingerprints.double(), ours.double())
    nearest = distance.min(dim=1)
    order = nearest.indices
    worst = float(nearest.values.max())
    if worst > tolerance or len(set(order.tolist())) != len(order) or len(order) != len(ours):
        return None, worst
    return order, worst


def adapter_difference(ours: dict, initial: dict, final: dict) -> tuple[float, float]:
    """After training: max |ours - final| over every adapter weight in ``ours`` (official
    names), and the largest ||ours - final|| / ||final - initial|| of one weight matrix (how far
    apart the two updates are, relative to the update itself)."""
    absolute, relative = 0.0, 0.0
    for bank, weights in ours.items():
        for name, weight in weights.items():
            gap = weight - final[bank][name]
            update = (final[bank][name] - initial[bank][name]).norm().item()
            absolute = max(absolute, gap.abs().max().item())
            relative = max(relative, gap.norm().item() / max(update, 1e-12))
    return absolute, relative


def step_agreement(reference, other) -> dict:
    """Two runs' per-step losses: Pearson, max and median |difference|, the largest
    |difference| over the first EXACT_STEPS steps, and the first step that differs by > 1e-4."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    gap = np.abs(reference - other)
    return {**agreement(reference, other), "median_abs_diff": float(np.median(gap)),
            "first_steps_max_abs_diff": float(gap[:EXACT_STEPS].max()),
            "first_step_over_1e-4": int(np.argmax(gap > 1e-4)) if (gap > 1e-4).any() else None}


def training_report(official: dict, trained, scores, ours: dict, nudged, nudged_scores,
                    nudged_state: dict, test) -> dict:
    """The training comparison: official against mvfa-lite, and mvfa-lite against itself moved
    by one ulp (the rounding yardstick); passed when the first steps agree to rounding and the
    programs drift apart no more than ROUNDING_FACTOR times the yardstick."""
    def after_epoch(run_scores) -> dict:
        return compare_scores(official_scores(official, test.has_masks),
                              official["test_paths"], run_scores, test.has_masks)
    after, nudged_after = after_epoch(scores), after_epoch(nudged_scores)
    losses = step_agreement(official["step_losses"], trained.step_losses)
    yardstick = step_agreement(trained.step_losses, nudged.step_losses)
    absolute, relative = adapter_difference(ours, official["init"], official["final"])
    nudged_absolute, nudged_relative = adapter_difference(nudged_state, official["init"], ours)
    allowed = max(ROUNDING_FACTOR * yardstick["median_abs_diff"], STEP_TOLERANCE)
    return dict(
        step_losses=losses, rounding_yardstick=yardstick, ours_steps=len(trained.step_losses),
        first_loss=[official["step_losses"][0], trained.step_losses[0]],
        last_loss=[official["step_losses"][-1], trained.step_losses[-1]],
        adapters_max_abs_diff=absolute, adapters_relative_diff=relative,
        yardstick_adapters_max_abs_diff=nudged_absolute,
        yardstick_adapters_relative_diff=nudged_relative,
        auroc_after_epoch={part: [values["auroc_official"], values["auroc_ours"],
                                  nudged_after[part]["auroc_ours"]]
                           for part, values in after.items()},
        passed=len(trained.step_losses) == len(official["step_losses"])
        and losses["first_steps_max_abs_diff"] <= STEP_TOLERANCE
        and losses["median_abs_diff"] <= allowed)


def compare_losses(official: dict) -> dict:
    """The official FocalLoss and BinaryDiceLoss (computed by the driver) against ours."""
    inputs = fixed_loss_inputs()
    ours = {"focal": float(focal_loss(inputs["probs"], inputs["masks"])),
            "dice": float(dice_loss(inputs["probs"][:, 1], inputs["masks"]))}
    result = {name: {"official": official[name], "ours": ours[name],
                     "abs_diff": abs(official[name] - ours[name])} for name in ours}
    result["passed"] = all(part["abs_diff"] <= 1e-6 for part in result.values())
    return result
