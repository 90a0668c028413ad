"""Score distributions that break approximate pixel metrics, and a slow exact AU-PRO.

Shared by tests/test_metrics.py and scripts/bench_metrics.py. Every case returns
(masks (N, H, W) bool, maps (N, H, W) float64).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def blobs(seed: int, n: int = 6, size: int = 32) -> np.ndarray:
    """Masks (n, size, size): the first image normal, the others with 1-3 random rectangles."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for mask in masks[1:]:
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 4, size=2)
            h, w = rng.integers(2, size // 3, size=2)
            mask[y:y + h, x:x + w] = True
    return masks


def smooth_maps(masks: np.ndarray, seed: int, signal: float = 3.0) -> np.ndarray:
    """Spatially smooth noise plus a blurred copy of the masks: an ordinary anomaly map."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=masks.shape), sigma=(0, 2, 2))
    return noise / noise.std() + signal * ndimage.gaussian_filter(masks * 1.0, sigma=(0, 1, 1))


def ordinary(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    masks = blobs(seed)
    return masks, smooth_maps(masks, seed)


def outlier(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One normal pixel scores 1e6: a min..max score histogram puts all others in one bin."""
    masks, maps = ordinary(seed)
    maps[0, 0, 0] = 1e6
    return masks, maps


def heavy_tail(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cauchy noise: most scores in a narrow band, a few spread over many orders of magnitude."""
    masks = blobs(seed)
    rng = np.random.default_rng(seed)
    return masks, rng.standard_cauchy(masks.shape) + 2.0 * masks


def ties(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores rounded to one decimal: about 60 distinct values, shared by both classes."""
    masks, maps = ordinary(seed)
    return masks, np.round(maps, 1)


def narrow_normal(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normal scores fill 1% of the range: evenly spaced thresholds all miss them."""
    masks = blobs(seed)
    rng = np.random.default_rng(seed)
    return masks, np.where(masks, rng.random(masks.shape), 0.01 * rng.random(masks.shape))


def whole_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One image is anomalous everywhere (a region covering the whole image) and the others'
    regions touch the image border."""
    masks = blobs(seed)
    masks[1] = True
    masks[2, :5, :] = True          # top edge
    masks[3, :, -3:] = True         # right edge
    masks[4, -4:, :4] = True        # bottom-left corner
    return masks, smooth_maps(masks, seed)


CASES = {"ordinary": ordinary, "outlier": outlier, "heavy tail": heavy_tail, "ties": ties,
         "narrow normal range": narrow_normal, "whole-image region": whole_image}


def reference_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """AU-PRO straight from its definition, one threshold at a time (slow: small cases only).

    Every distinct score t is a threshold; predicted anomalous: score >= t. PRO(t) = mean over
    the 8-connected ground-truth regions of each image of the fraction predicted anomalous;
    FPR(t) = fraction of normal pixels predicted anomalous. Trapezoid area of the curve
    (0, 0) -> ... -> (1, 1) up to fpr_limit, PRO interpolated there, divided by fpr_limit.
    """
    regions = []
    for mask, scores in zip(masks, maps):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [scores[labelled == k] for k in range(1, count + 1)]
    normal = maps[masks == 0]
    fpr, pro = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fpr.append(np.mean(normal >= t))
        pro.append(np.mean([np.mean(region >= t) for region in regions]))
    fpr, pro = np.array(fpr + [1.0]), np.array(pro + [1.0])
    inside = fpr <= fpr_limit
    x, y = fpr[inside], pro[inside]
    if x[-1] < fpr_limit:                       # interpolate PRO at the limit
        after = np.argmax(~inside)
        y_limit = y[-1] + (pro[after] - y[-1]) * (fpr_limit - x[-1]) / (fpr[after] - x[-1])
        x, y = np.append(x, fpr_limit), np.append(y, y_limit)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / fpr_limit)
