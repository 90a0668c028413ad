"""The multi-level adaptation loss: focal + dice on the segmentation maps, BCE on the
image score, at every level, summed (all weights 1, as in the paper).

Datasets without masks contribute the BCE terms only; the trainer then steps the
classification bank alone (see train.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .branches import class_score, patch_logits, segmentation_probs
from .model import Features


def focal_loss(probs: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0,
               smooth: float = 1e-5) -> torch.Tensor:
    """Focal loss on softmax probabilities (B, 2, H, W) against a binary mask (B, H, W).

    p_t is the probability of the true class; the loss is mean(-(1 - p_t)^gamma log p_t),
    so confidently right pixels cost almost nothing and the rare lesion pixels dominate.
    """
    target = torch.stack([1 - mask, mask], dim=1).clamp(smooth, 1 - smooth)   # (B, 2, H, W)
    p_true = (target * probs).sum(dim=1) + smooth                             # (B, H, W)
    return (-(1 - p_true) ** gamma * p_true.log()).mean()


def dice_loss(prob: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - Dice overlap per image (abnormal probability (B, H, W) vs mask), batch mean.

    For a normal image (empty mask) it is 1 - 1 / (sum(prob) + 1): it pushes the map to 0.
    """
    prob, mask = prob.flatten(1), mask.flatten(1)
    overlap = (prob * mask).sum(1)
    return (1 - (2 * overlap + smooth) / (prob.sum(1) + mask.sum(1) + smooth)).mean()


def classification_loss(score: torch.Tensor, label: torch.Tensor, bce_on: str) -> torch.Tensor:
    """BCE of the image score (B,) in [0, 1] against labels (B,).

    ``bce_on="logits"`` is the official code: the probability is fed to BCE-with-logits,
    i.e. squashed again by a sigmoid. ``"probabilities"`` is the plain, correct BCE.
    """
    label = label.float()
    if bce_on == "logits":
        return F.binary_cross_entropy_with_logits(score, label)
    return F.binary_cross_entropy(score.clamp(1e-6, 1 - 1e-6), label)


def mvfa_loss(features: Features, text: torch.Tensor, masks: torch.Tensor,
              labels: torch.Tensor, has_masks: bool, temperature: float,
              bce_on: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over levels of focal + dice (when masks exist) + BCE.

    Returns the loss and its detached parts (tensors, so that no GPU sync happens here).
    """
    size = masks.shape[-1]
    parts = {name: torch.zeros((), device=masks.device) for name in ("focal", "dice", "bce")}
    total = 0.0
    for seg, det in zip(features.seg, features.det):
        bce = classification_loss(class_score(patch_logits(det, text, temperature)), labels,
                                  bce_on)
        total = total + bce
        parts["bce"] += bce.detach()
        if has_masks:
            probs = segmentation_probs(patch_logits(seg, text, temperature), size)  # (B,2,S,S)
            focal, dice = focal_loss(probs, masks), dice_loss(probs[:, 1], masks)
            total = total + focal + dice
            parts["focal"] += focal.detach()
            parts["dice"] += dice.detach()
    return total, parts
