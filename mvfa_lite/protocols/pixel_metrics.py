"""Pixel-level metrics: AUROC, AP, F1-max and AUPRO of anomaly maps against masks, exact.

Pixel-level test sets are too large for scikit-learn (3,715 images of 240x240 are 214 M
pixels: minutes and gigabytes), so they are computed here, exactly, a chunk of images at a
time (maps and masks may be arrays, tensors or :class:`~.pixelstore.PixelStore`\\ s):

* first pass: the anomalous pixels' scores (a small part of the pixels) are gathered, with
  the ground-truth region of each, and sorted;
* every distinct score p of an anomalous pixel gives two points of the curves: all pixels
  scoring > p predicted anomalous, then all scoring >= p. Between two such points only
  normal pixels change side, so the ROC and PRO curves are flat there and the points list
  every corner of the curves: the areas are exact, ties included (a tie is the straight
  segment between the "> p" and ">= p" points, as in scikit-learn and the MVTec AD code);
* second pass: each normal pixel is counted against those distinct scores (a binary search,
  on a GPU there when the maps are there), so the bulk of the pixels is never held at once.

:func:`pixel_auroc` and :func:`pixel_average_precision` equal scikit-learn's
``roc_auc_score`` and ``average_precision_score`` on the flattened pixels; :func:`aupro` is
the MVTec AD definition (see its docstring); :func:`pixel_metrics` computes all of them from
one sort.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import ndimage

from ..errors import MetricError
from .pixelstore import PixelStore, image_chunks

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # structuring element for ndimage.label
BLOCK = 2**20                   # curve corners handled at a time by the metrics
CHUNK_PIXELS = 2**21            # pixels read at a time (fewer chunks: fewer searches)
_DIVERGED_HINT = ("The model produced them (for example, training diverged); "
                  "try a lower learning rate or run in fp32.")


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _as_images(values):
    """A store or a tensor stays itself; anything else becomes a numpy array."""
    return values if isinstance(values, (PixelStore, torch.Tensor)) else np.asarray(values)


def _chunks(values):
    """(first image, images) of ``values`` (N, H, W), :data:`CHUNK_PIXELS` at a time."""
    return image_chunks(values, CHUNK_PIXELS)


def _pairs(masks, maps):
    """(masks, maps) of the same images, a chunk at a time."""
    for (_, mask_chunk), (_, map_chunk) in zip(_chunks(masks), _chunks(maps)):
        yield mask_chunk, map_chunk


def _check_shapes(masks, maps, metric: str) -> None:
    if len(masks.shape) != 3 or tuple(masks.shape) != tuple(maps.shape):
        raise MetricError(
            f"{metric} needs one anomaly map per mask: masks have shape {tuple(masks.shape)} but "
            f"maps have shape {tuple(maps.shape)}. Pass two arrays of the same shape (N, H, W); "
            "squeeze any channel axis and resize the maps to the mask size.")
    if masks.shape[0] * masks.shape[1] * masks.shape[2] == 0:
        raise MetricError(f"{metric} is undefined: there are no pixels. "
                          "Add test images with masks.")


def _binary(mask_chunk, metric: str) -> np.ndarray:
    """A chunk of masks as bool, after checking it holds only 0 and 1."""
    mask_chunk = _numpy(mask_chunk)
    if ((mask_chunk != 0) & (mask_chunk != 1)).any():
        raise MetricError(
            f"{metric} needs binary masks (0 = normal, 1 = anomalous), but found the values "
            f"{np.unique(mask_chunk)[:10].tolist()}. Threshold the masks first, e.g. masks > 0.5 "
            "(or > 127 for 0-255 images).")
    return mask_chunk != 0


def _scores(map_chunk):
    """float32 and float64 maps as they are; other types widened to float64, exactly."""
    if isinstance(map_chunk, torch.Tensor):
        map_chunk = map_chunk.detach()
        return map_chunk if map_chunk.dtype in (torch.float32, torch.float64) else \
            map_chunk.double()
    map_chunk = np.asarray(map_chunk)
    return map_chunk if map_chunk.dtype in (np.float32, np.float64) else \
        map_chunk.astype(np.float64)


def _count_normal(values, normal) -> tuple:
    """For the distinct anomalous scores ``values`` (U,), increasing, and some normal scores
    (M,): per p = values[j], how many normal scores are < p and how many are == p, (U,) each.
    numpy arrays, or tensors (on a GPU: counted there)."""
    if isinstance(normal, torch.Tensor):
        values = torch.as_tensor(values, device=normal.device, dtype=normal.dtype)
        below = torch.searchsorted(values, normal, side="left")       # anomalous scores < v
        equal = values[below.clamp(max=len(values) - 1)] == normal
        first_above = torch.bincount(below, minlength=len(values) + 1)
        at = torch.bincount(below[equal], minlength=len(values))
        return (first_above.cumsum(0)[:-1] - at).cpu().numpy(), at.cpu().numpy()
    values = values.astype(normal.dtype, copy=False)
    if len(values) < len(normal):      # fewer scores than pixels: sort the pixels, search them
        normal = np.sort(normal)
        below = np.searchsorted(normal, values, side="left")
        return below, np.searchsorted(normal, values, side="right") - below
    below = np.searchsorted(values, normal, side="left")
    equal = values[np.minimum(below, len(values) - 1)] == normal
    first_above = np.bincount(below, minlength=len(values) + 1)
    at = np.bincount(below[equal], minlength=len(values))
    return first_above.cumsum()[:-1] - at, at


@dataclass
class _Anomalous:
    """The anomalous pixels of a split: each distinct score, increasing (U,), how many pixels
    score it, and the sum of 1 / (region size) over them (for AUPRO)."""
    values: np.ndarray
    at: np.ndarray
    overlap_at: np.ndarray
    regions: int


def _anomalous_pixels(masks, maps, regions: bool, metric: str) -> tuple[_Anomalous, int]:
    """First pass: (the anomalous pixels, the number of pixels)."""
    scores, region_ids, sizes, total, regions_seen = [], [], [], 0, 0
    for mask_chunk, map_chunk in _pairs(masks, maps):
        mask_chunk = _binary(mask_chunk, metric)                     # (B, H, W) bool
        score_chunk = _numpy(_scores(map_chunk))
        scores.append(score_chunk[mask_chunk])
        total += mask_chunk.size
        for mask in mask_chunk if regions else ():
            if mask.any():
                labelled, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
                region_ids.append(labelled[mask] - 1 + regions_seen)         # int32
                sizes.append(np.bincount(labelled.ravel())[1:])
                regions_seen += n
    anomalous = np.concatenate(scores)
    del scores
    if len(anomalous) == 0:
        raise MetricError(
            f"{metric} is undefined: the masks contain only normal pixels ({total} of {total}). "
            "Add abnormal images with masks to the test split (Ungood/anomaly_mask) or report "
            "another metric.")
    if len(anomalous) == total:
        raise MetricError(
            f"{metric} is undefined: the masks contain only anomalous pixels ({total} of "
            f"{total}). Add normal images (good/img) to the test split or report another metric.")
    order = np.argsort(anomalous, kind="stable")
    anomalous = anomalous[order]
    if regions:                 # each anomalous pixel's region, in the sorted order
        region_ids = np.concatenate(region_ids)[order]
    del order
    starts = np.flatnonzero(np.concatenate(([True], anomalous[1:] != anomalous[:-1])))
    at = np.diff(np.append(starts, len(anomalous)))
    overlap_at = np.zeros(len(starts))
    if regions:                 # per distinct score: the sum of 1 / (its pixels' region size)
        overlap_at = np.add.reduceat(1.0 / np.concatenate(sizes)[region_ids], starts)
    return _Anomalous(anomalous[starts], at, overlap_at, regions_seen), total


def _non_finite(maps) -> int:
    return sum(int((~np.isfinite(_numpy(chunk))).sum()) for _, chunk in _chunks(maps))


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

    def auroc(self) -> float:
        return _area_up_to(self.false_positives, self.true_positives, 1.0,
                           self.normal, self.anomalous)

    def average_precision(self) -> float:
        """Sum over thresholds of (recall increase) x precision, as scikit-learn defines it."""
        total = 0.0
        for part in _blocks(len(self.thresholds)):
            above = self.true_positives[1:-1:2][part]                 # (block,) each
            at, fp = self.true_positives[2:-1:2][part], self.false_positives[2:-1:2][part]
            total += float(np.sum((at - above) / self.anomalous * (at / (at + fp))))
        return total

    def aupro(self, fpr_limit: float = 0.3) -> float:
        return _area_up_to(self.false_positives, self.overlap, fpr_limit, self.normal,
                           self.regions) / fpr_limit

    def f1_max(self) -> tuple[float, float]:
        """Best pixel F1 over the thresholds "score >= p" (F1 can only peak at the score of
        an anomalous pixel), and that p; of equal F1s the lowest p, as :func:`f1_max`."""
        best_f1, best = -1.0, 0
        for part in _blocks(len(self.thresholds)):
            tp, fp = self.true_positives[2:-1:2][part], self.false_positives[2:-1:2][part]
            f1 = 2 * tp / (tp + fp + self.anomalous)                  # = 2PR / (P + R)
            last = len(f1) - 1 - int(np.argmax(f1[::-1]))              # the lowest p of a tie
            if f1[last] >= best_f1:
                best_f1, best = float(f1[last]), part.start + last
        return best_f1, float(self.thresholds[best])


def _blocks(count: int) -> list[slice]:
    """Slices of ``range(count)``, :data:`BLOCK` at a time (temporaries of one block only)."""
    return [slice(start, min(start + BLOCK, count)) for start in range(0, count, BLOCK)]


def pixel_curves(masks, maps, regions: bool = True, metric: str = "pixel metrics",
                 device: str | torch.device | None = None) -> PixelCurves:
    """The exact ROC / PRO curve corners of anomaly maps (N, H, W) against masks (N, H, W).

    ``regions=False`` skips labelling the ground-truth regions (no AUPRO then). The normal
    pixels are counted on ``device`` (default: where the maps are), a chunk of images at a
    time; the rest runs in numpy.
    """
    masks, maps = _as_images(masks), _as_images(maps)
    _check_shapes(masks, maps, metric)
    anomalous, total = _anomalous_pixels(masks, maps, regions, metric)
    if not np.isfinite(anomalous.values[[0, -1]]).all():
        raise MetricError(f"{metric} is undefined: {_non_finite(maps)} of {total} anomaly-map "
                          f"pixels are non-finite (NaN or inf). {_DIVERGED_HINT}")
    normal_below = np.zeros(len(anomalous.values), np.int64)   # per p: normal pixels < p
    normal_at = np.zeros(len(anomalous.values), np.int64)      #        normal pixels == p
    device = torch.device(device) if device is not None else \
        (maps.device if isinstance(maps, torch.Tensor) else torch.device("cpu"))
    gpu = device.type != "cpu"
    for mask_chunk, map_chunk in _pairs(masks, maps):
        score_chunk = _scores(map_chunk)
        if gpu:
            score_chunk = torch.as_tensor(score_chunk).to(device)
            normal = score_chunk[~torch.as_tensor(mask_chunk).to(device).bool()]
        else:
            normal = _numpy(score_chunk)[~_binary(mask_chunk, metric)]
        finite = torch.isfinite(normal).all() if gpu else np.isfinite(normal).all()
        if not finite:
            raise MetricError(f"{metric} is undefined: {_non_finite(maps)} of {total} "
                              f"anomaly-map pixels are non-finite (NaN or inf). {_DIVERGED_HINT}")
        below, at = _count_normal(anomalous.values, normal)
        normal_below += below
        normal_at += at
    # the corners, highest p first: "> p" at odd positions, ">= p" at even ones; built in
    # place (per distinct score p, (U,) each, reversed)
    u = len(anomalous.values)
    n_anomalous = int(anomalous.at.sum())
    n_normal = total - n_anomalous
    fp, tp = np.empty(2 * u + 2), np.empty(2 * u + 2)
    fp[0], fp[-1], tp[0], tp[-1] = 0.0, n_normal, 0.0, n_anomalous
    np.subtract(n_normal, normal_below[::-1], out=fp[2:-1:2])        # normal pixels >= p
    normal_at += normal_below                                         # normal pixels <= p
    np.subtract(n_normal, normal_at[::-1], out=fp[1:-1:2])            # normal pixels > p
    del normal_below, normal_at
    ends = np.cumsum(anomalous.at)                                    # anomalous pixels <= p
    np.subtract(n_anomalous, ends[::-1], out=tp[1:-1:2])
    np.add(tp[1:-1:2], anomalous.at[::-1], out=tp[2:-1:2])
    del ends
    overlap = np.zeros(2 * u + 2)               # left untouched (no memory) without regions
    if regions:
        up_to = np.cumsum(anomalous.overlap_at)
        np.maximum(up_to[-1] - up_to[::-1], 0.0, out=overlap[1:-1:2])
        np.add(overlap[1:-1:2], anomalous.overlap_at[::-1], out=overlap[2:-1:2])
        overlap[-1] = anomalous.regions
        del up_to
    return PixelCurves(fp, tp, overlap, n_normal, n_anomalous, anomalous.regions,
                       anomalous.values[::-1].astype(np.float64))


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level AUROC of anomaly maps (N, H, W) against binary masks (N, H, W): the
    probability that an anomalous pixel outscores a normal one, ties counting one half."""
    return pixel_curves(masks, maps, regions=False, metric="pixel AUROC").auroc()


def pixel_average_precision(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level average precision of anomaly maps (N, H, W) against masks (N, H, W), the
    step-wise definition of ``sklearn.metrics.average_precision_score``."""
    return pixel_curves(masks, maps, regions=False, metric="pixel AP").average_precision()


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float, x_scale: float,
                y_scale: float) -> float:
    """Trapezoid area under y / y_scale against x / x_scale on [0, x_max]; x is
    non-decreasing, starts at 0 and ends at or beyond x_max (summed a block at a time)."""
    keep = sum(int(np.count_nonzero(x[part] / x_scale <= x_max)) for part in _blocks(len(x)))
    area = 0.0
    for part in _blocks(keep - 1):       # trapezoids between corners part.start .. part.stop
        xs = x[part.start:part.stop + 1] / x_scale
        ys = y[part.start:part.stop + 1] / y_scale
        area += float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2))
    if keep < len(x):  # add the point at exactly x_max by linear interpolation
        x0, x1 = x[keep - 1] / x_scale, x[keep] / x_scale
        y0, y1 = y[keep - 1] / y_scale, y[keep] / y_scale
        area += float((x_max - x0) * (2 * y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)) / 2)
    return area


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
                  regions: bool = True, device=None) -> dict[str, float]:
    """pixel_auroc, pixel_ap, pixel_f1_max with its threshold (a pixel is anomalous when its
    score >= the threshold) and (unless ``regions=False``) aupro, from one sort of the pixels;
    ``device``: where the normal pixels are counted (default: where the maps are)."""
    curves = pixel_curves(masks, maps, regions=regions, device=device)
    f1, threshold = curves.f1_max()
    result = {"pixel_auroc": curves.auroc(), "pixel_ap": curves.average_precision(),
              "pixel_f1_max": f1, "pixel_f1_threshold": threshold}
    return result | ({"aupro": curves.aupro(fpr_limit)} if regions else {})


def pixel_metrics_absent(masks) -> str | None:
    """Why there are no pixel metrics for these test masks (N, H, W); None when there are."""
    if masks is None:
        return "the test set has no ground-truth masks (a classification-only dataset)"
    masks = _as_images(masks)
    if not any(bool(chunk.any()) for _, chunk in _chunks(masks)):
        return (f"all {len(masks)} test masks are empty: no image has an annotated anomalous "
                "pixel to localise")
    return None
