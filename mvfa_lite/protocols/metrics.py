"""Evaluation metrics for anomaly classification (image level) and segmentation (pixel level).

Every function takes numpy arrays or torch tensors (on any device) and returns plain Python
floats. Label convention: 0 = normal, 1 = abnormal; a higher score means "more anomalous".

Image-level metrics delegate to scikit-learn. Pixel-level test sets are too large for it
(3,715 images of 240x240 are 214 M pixels: minutes and gigabytes), so the pixel metrics are
computed here, exactly, from one sort:

* sort the normal pixels' scores (the bulk of the data; numpy's sort on the CPU, torch's
  on a GPU) and the anomalous pixels' scores;
* every distinct score p of an anomalous pixel gives two points of the curves: all pixels
  scoring > p predicted anomalous, then all scoring >= p. Counting the normal pixels above
  p is a binary search in the sorted normal scores. Between two such points only normal
  pixels change side, so the ROC and PRO curves are flat there and the points list every
  corner of the curves: the areas are exact, ties included (a tie is the straight segment
  between the "> p" and ">= p" points, as in scikit-learn and the MVTec AD code).

:func:`pixel_auroc` and :func:`pixel_average_precision` equal scikit-learn's
``roc_auc_score`` and ``average_precision_score`` on the flattened pixels; :func:`aupro` is
the MVTec AD definition (see its docstring); :func:`pixel_metrics` computes all three from
one sort.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import ndimage
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)

from ..errors import MetricError

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # structuring element for ndimage.label

_DIVERGED_HINT = (
    "The model produced them (for example, training diverged); "
    "try a lower learning rate or run in fp32."
)


def _numpy(values) -> np.ndarray:
    """Any array-like, including a tensor on any device, as a numpy array."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


# --------------------------------------------------------------------------- image level


def _check_image_inputs(labels: ArrayLike, scores: ArrayLike, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate image labels and scores; return them as (N,) int and (N,) float64 arrays."""
    labels = _numpy(labels)
    scores = _numpy(scores).astype(np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise MetricError(
            f"{metric} needs one score per image: labels have shape {labels.shape} but scores "
            f"have shape {scores.shape}. Pass two 1-D arrays of the same length."
        )
    if labels.size == 0:
        raise MetricError(f"{metric} is undefined: the test set is empty. Add test images.")
    if not np.isin(labels, (0, 1)).all():
        found = np.unique(labels)[:10].tolist()
        raise MetricError(
            f"{metric} needs labels 0 (normal) or 1 (abnormal), but found the values {found}. "
            "Map the labels to 0/1 first."
        )
    labels = labels.astype(np.int64)
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise MetricError(
            f"{metric} is undefined: {bad} of {scores.size} image scores are non-finite "
            f"(NaN or inf). {_DIVERGED_HINT}"
        )
    n, n_abnormal = labels.size, int(labels.sum())
    if n_abnormal == 0:
        raise MetricError(
            f"{metric} is undefined: the test set has only normal images ({n} of {n}). "
            "Add abnormal images to the test split (Ungood/img) or report another metric."
        )
    if n_abnormal == n:
        raise MetricError(
            f"{metric} is undefined: the test set has only abnormal images ({n} of {n}). "
            "Add normal images to the test split (good/img) or report another metric."
        )
    return labels, scores


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve of image scores (N,) against image labels (N,)."""
    labels, scores = _check_image_inputs(labels, scores, "image AUROC")
    return float(roc_auc_score(labels, scores))


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average precision (area under the precision-recall curve) at image level."""
    labels, scores = _check_image_inputs(labels, scores, "image AP")
    return float(average_precision_score(labels, scores))


def f1_max(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """Best F1 over all thresholds, and the threshold achieving it.

    An image is predicted abnormal when ``score >= threshold``.
    """
    labels, scores = _check_image_inputs(labels, scores, "image F1-max")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The last (precision=1, recall=0) point has no threshold: drop it.  # (T,) each
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


# --------------------------------------------------------------------------- pixel level


def _pixel_arrays(masks, maps) -> tuple:
    """Maps on a GPU stay there as tensors (masks join them); everything else becomes numpy
    (torch's CPU kernels are slower for this work, and stall when other jobs share the cores)."""
    if isinstance(maps, torch.Tensor) and maps.device.type != "cpu":
        masks = masks if isinstance(masks, torch.Tensor) else torch.as_tensor(np.asarray(masks))
        return masks.detach().to(maps.device), maps.detach()
    return _numpy(masks), _numpy(maps)


def _check_pixel_inputs(masks: ArrayLike, maps: ArrayLike, metric: str) -> tuple:
    """Validate masks and maps (both (N, H, W)). Returns bool masks and float32 or float64
    maps (other types are widened to float64, exactly): numpy arrays, or tensors on a GPU.
    Non-finite scores are caught after sorting, where it costs nothing (:func:`_sorted_counts`)."""
    masks, maps = _pixel_arrays(masks, maps)
    if masks.ndim != 3 or tuple(masks.shape) != tuple(maps.shape):
        raise MetricError(
            f"{metric} needs one anomaly map per mask: masks have shape {tuple(masks.shape)} but "
            f"maps have shape {tuple(maps.shape)}. Pass two arrays of the same shape (N, H, W); "
            "squeeze any channel axis and resize the maps to the mask size."
        )
    n = math.prod(masks.shape)
    if n == 0:
        raise MetricError(f"{metric} is undefined: there are no pixels. "
                          "Add test images with masks.")
    if ((masks != 0) & (masks != 1)).any():
        found = np.unique(_numpy(masks))[:10].tolist()
        raise MetricError(
            f"{metric} needs binary masks (0 = normal, 1 = anomalous), but found the values "
            f"{found}. Threshold the masks first, e.g. masks > 0.5 (or > 127 for 0-255 images)."
        )
    masks = masks != 0
    if isinstance(maps, torch.Tensor):
        maps = maps if maps.dtype in (torch.float32, torch.float64) else maps.double()
    elif maps.dtype not in (np.float32, np.float64):
        maps = maps.astype(np.float64)
    n_pos = int(masks.sum())
    if n_pos == 0:
        raise MetricError(
            f"{metric} is undefined: the masks contain only normal pixels ({n} of {n}). Add "
            "abnormal images with masks to the test split (Ungood/anomaly_mask) or report "
            "another metric."
        )
    if n_pos == n:
        raise MetricError(
            f"{metric} is undefined: the masks contain only anomalous pixels ({n} of {n}). Add "
            "normal images (good/img) to the test split or report another metric."
        )
    return masks, maps


@dataclass
class _SortedCounts:
    """Per distinct anomalous score p, ascending, (U,) each: normal pixels below p, normal
    pixels at or below p, anomalous pixels at p; and the order sorting the anomalous scores."""
    normal_below: np.ndarray
    normal_up_to: np.ndarray
    anomalous_at: np.ndarray
    order: np.ndarray
    finite: bool            # False when a score is NaN or +-inf
    values: np.ndarray      # the distinct anomalous scores p, increasing


def _sorted_counts(normal, anomalous) -> _SortedCounts:
    """Sort the normal (n_normal,) and anomalous (n_anomalous,) scores and count; numpy
    arrays (sorted in place: pass copies) or tensors on a GPU. NaN sorts last, -inf first."""
    if isinstance(normal, torch.Tensor):
        normal = torch.sort(normal).values
        anomalous, order = torch.sort(anomalous)
        values, at = torch.unique_consecutive(anomalous, return_counts=True)
        ends = torch.stack([normal[0], normal[-1], anomalous[0], anomalous[-1]])
        below, up_to = (torch.searchsorted(normal, values, side=side) for side in ("left", "right"))
        return _SortedCounts(below.cpu().numpy(), up_to.cpu().numpy(), at.cpu().numpy(),
                             order.cpu().numpy(), bool(torch.isfinite(ends).all()),
                             values.double().cpu().numpy())
    normal.sort()
    order = np.argsort(anomalous)
    anomalous = anomalous[order]
    starts = np.flatnonzero(np.concatenate(([True], anomalous[1:] != anomalous[:-1])))
    values, at = anomalous[starts], np.diff(np.append(starts, len(anomalous)))
    ends = np.array([normal[0], normal[-1], anomalous[0], anomalous[-1]])
    return _SortedCounts(np.searchsorted(normal, values, side="left"),
                         np.searchsorted(normal, values, side="right"), at, order,
                         bool(np.isfinite(ends).all()), values.astype(np.float64))


def _region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """1 / (size of its ground-truth region) for every anomalous pixel, in ``masks[masks]``
    order, and the number of regions. Regions are 8-connected, within one image."""
    weights, count = [], 0
    for mask in masks:                                               # (H, W) bool
        if mask.any():
            regions, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)   # (H, W) ids 0..n
            weights.append(1.0 / np.bincount(regions.ravel())[regions[mask]])
            count += n
    return np.concatenate(weights), count


@dataclass
class PixelCurves:
    """The corners of the ROC and PRO curves, highest threshold first (module docstring).

    Corner 0 is (0, 0); then, for each distinct score p of an anomalous pixel, from the
    highest: "score > p", then "score >= p" predicted anomalous; the last corner predicts
    every pixel anomalous. Counts, (2U + 2,) each:
    """
    false_positives: np.ndarray  # normal pixels predicted anomalous
    true_positives: np.ndarray   # anomalous pixels predicted anomalous
    overlap: np.ndarray          # sum over regions of the fraction predicted anomalous
    normal: int                  # normal pixels
    anomalous: int               # anomalous pixels
    regions: int                 # ground-truth regions (0 when not counted)
    thresholds: np.ndarray       # (U,) the distinct anomalous scores p, highest first

    @property
    def fpr(self) -> np.ndarray:
        return self.false_positives / self.normal

    def auroc(self) -> float:
        return _area_up_to(self.fpr, self.true_positives / self.anomalous, 1.0)

    def average_precision(self) -> float:
        """Sum over thresholds of (recall increase) x precision, as scikit-learn defines it."""
        above, at = self.true_positives[1:-1:2], self.true_positives[2:-1:2]   # (U,) each
        precision = at / (at + self.false_positives[2:-1:2])
        return float(np.sum((at - above) / self.anomalous * precision))

    def aupro(self, fpr_limit: float = 0.3) -> float:
        return _area_up_to(self.fpr, self.overlap / self.regions, fpr_limit) / fpr_limit

    def f1_max(self) -> tuple[float, float]:
        """Best pixel F1 over the thresholds "score >= p" (F1 can only peak at the score of
        an anomalous pixel), and that p; of equal F1s the lowest p, as :func:`f1_max`."""
        tp, fp = self.true_positives[2:-1:2], self.false_positives[2:-1:2]   # (U,) each
        f1 = 2 * tp / (tp + fp + self.anomalous)       # = 2PR / (P + R)
        best = len(f1) - 1 - int(np.argmax(f1[::-1]))
        return float(f1[best]), float(self.thresholds[best])


def pixel_curves(masks: ArrayLike, maps: ArrayLike, regions: bool = True,
                 metric: str = "pixel metrics") -> PixelCurves:
    """The exact ROC / PRO curve corners of anomaly maps (N, H, W) against masks (N, H, W).

    ``regions=False`` skips labelling the ground-truth regions (no AUPRO then). Maps on a
    GPU are sorted there; the rest runs in numpy.
    """
    masks, maps = _check_pixel_inputs(masks, maps, metric)
    counts = _sorted_counts(maps[~masks], maps[masks])       # boolean indexing: copies
    if not counts.finite:
        n_bad = int((~np.isfinite(_numpy(maps))).sum())
        raise MetricError(
            f"{metric} is undefined: {n_bad} of {math.prod(maps.shape)} anomaly-map pixels are "
            f"non-finite (NaN or inf). {_DIVERGED_HINT}"
        )
    # per distinct anomalous score p (U,): pixels above p, and at or above p
    ends = np.cumsum(counts.anomalous_at)                          # anomalous pixels <= p
    n_anomalous = int(ends[-1])
    n_normal = math.prod(masks.shape) - n_anomalous
    fp_above, fp_at = n_normal - counts.normal_up_to, n_normal - counts.normal_below
    tp_above, tp_at = n_anomalous - ends, n_anomalous - ends + counts.anomalous_at
    overlap_above = overlap_at = np.zeros(len(ends))
    n_regions = 0
    if regions:
        weights, n_regions = _region_weights(_numpy(masks))
        below = np.cumsum(weights[counts.order])                     # (n_anomalous,)
        overlap_above = np.maximum(below[-1] - below[ends - 1], 0.0)
        overlap_at = below[-1] - np.concatenate(([0.0], below[ends[:-1] - 1]))

    def corners(above: np.ndarray, at: np.ndarray, everything: float) -> np.ndarray:
        pairs = np.stack([above, at], axis=1)[::-1]                  # (U, 2), highest p first
        return np.concatenate(([0.0], pairs.ravel(), [everything]))

    return PixelCurves(corners(fp_above, fp_at, n_normal), corners(tp_above, tp_at, n_anomalous),
                       corners(overlap_above, overlap_at, n_regions), n_normal, n_anomalous,
                       n_regions, counts.values[::-1].copy())


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level AUROC of anomaly maps (N, H, W) against binary masks (N, H, W): the
    probability that an anomalous pixel outscores a normal one, ties counting one half."""
    return pixel_curves(masks, maps, regions=False, metric="pixel AUROC").auroc()


def pixel_average_precision(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level average precision of anomaly maps (N, H, W) against masks (N, H, W), the
    step-wise definition of ``sklearn.metrics.average_precision_score``."""
    return pixel_curves(masks, maps, regions=False, metric="pixel AP").average_precision()


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) on [0, x_max]; x is non-decreasing, starts at 0, ends >= x_max."""
    keep = int(np.searchsorted(x, x_max, side="right"))  # x[:keep] <= x_max
    xs, ys = x[:keep], y[:keep]
    if keep < len(x):  # add the point at exactly x_max by linear interpolation
        y_at = ys[-1] + (y[keep] - ys[-1]) * (x_max - xs[-1]) / (x[keep] - xs[-1])
        xs, ys = np.append(xs, x_max), np.append(ys, y_at)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2))


def aupro(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap (PRO) curve, up to ``fpr_limit``.

    The MVTec AD definition (Bergmann et al., IJCV 2021, and its evaluation code): every
    distinct score t is a threshold, a pixel is predicted anomalous when ``score >= t``, and

    * PRO(t) = mean, over every connected ground-truth region (8-connectivity, within one
      image, all images pooled), of the fraction of that region's pixels predicted anomalous;
    * FPR(t) = fraction of normal pixels (mask == 0, all images) predicted anomalous.

    The curve runs from (0, 0) to (1, 1); its area for FPR in [0, fpr_limit] (trapezoid
    rule, PRO interpolated linearly at fpr_limit) is divided by ``fpr_limit``, so that a
    perfect map scores 1.0 and a constant map scores fpr_limit / 2. A region may cover a
    whole image or touch its border; it counts like any other.
    """
    if not 0 < fpr_limit <= 1:
        raise MetricError(f"AUPRO needs 0 < fpr_limit <= 1, got {fpr_limit}.")
    return pixel_curves(masks, maps, metric="AUPRO").aupro(fpr_limit)


def pixel_metrics(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3,
                  regions: bool = True) -> dict[str, float]:
    """pixel_auroc, pixel_ap, pixel_f1_max with its threshold (a pixel is anomalous when its
    score >= the threshold) and (unless ``regions=False``) aupro, from one sort of the pixels."""
    curves = pixel_curves(masks, maps, regions=regions)
    f1, threshold = curves.f1_max()
    result = {"pixel_auroc": curves.auroc(), "pixel_ap": curves.average_precision(),
              "pixel_f1_max": f1, "pixel_f1_threshold": threshold}
    return result | ({"aupro": curves.aupro(fpr_limit)} if regions else {})


# --------------------------------------------------------------------------- summary


def pixel_metrics_absent(masks: ArrayLike | None) -> str | None:
    """Why there are no pixel metrics for these test masks (N, H, W); None when there are."""
    if masks is None:
        return "the test set has no ground-truth masks (a classification-only dataset)"
    if not (masks if isinstance(masks, torch.Tensor) else np.asarray(masks)).any():
        return (f"all {len(masks)} test masks are empty: no image has an annotated anomalous "
                "pixel to localise")
    return None


def summarize(
    labels: ArrayLike,
    image_scores: ArrayLike,
    masks: ArrayLike | None = None,
    maps: ArrayLike | None = None,
    regions: bool = True,
) -> dict[str, float]:
    """All metrics in one dict.

    Always: image_auroc, image_ap, image_f1_max, image_f1_threshold. When ``masks`` is given
    and contains anomalous pixels, also pixel_auroc, pixel_ap, pixel_f1_max,
    pixel_f1_threshold and (unless ``regions=False``) aupro (``maps`` required); otherwise :func:`pixel_metrics_absent` says why they are missing.
    """
    f1, threshold = f1_max(labels, image_scores)
    result = {
        "image_auroc": image_auroc(labels, image_scores),
        "image_ap": average_precision(labels, image_scores),
        "image_f1_max": f1,
        "image_f1_threshold": threshold,
    }
    if pixel_metrics_absent(masks) is not None:
        return result
    if maps is None:
        raise MetricError(
            "Pixel metrics need anomaly maps: masks were given but maps is None. "
            "Pass the model's anomaly maps (N, H, W) or leave masks out."
        )
    return result | pixel_metrics(masks, maps, regions=regions)
