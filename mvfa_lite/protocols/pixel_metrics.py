"""Pixel-level metrics: AUROC, AP, F1-max and AUPRO of anomaly maps against masks, exact.

Pixel-level test sets are too large for scikit-learn (3,715 images of 240x240 are 214 M
pixels: minutes and gigabytes), so they are computed here, exactly, a chunk of images at a
time (maps and masks may be arrays, tensors or :class:`~.pixelstore.PixelStore`\\ s):

* first pass: the anomalous pixels' scores (a small part of the pixels) are gathered and
  sorted, and only their distinct values and counts are kept;
* every distinct score p of an anomalous pixel gives two points of the curves: all pixels
  scoring > p predicted anomalous, then all scoring >= p. Between two such points only
  normal pixels change side, so the ROC and PRO curves are flat there and the points list
  every corner of the curves: the areas are exact, ties included (a tie is the straight
  segment between the "> p" and ">= p" points, as in scikit-learn and the MVTec AD code);
* second pass, a chunk of images at a time: the chunk's normal pixels are sorted and each
  distinct score is looked up among them (on a GPU when the maps are there), and each
  anomalous pixel adds 1 / (its region's size) to its score's PRO overlap; so the bulk of
  the pixels is never held at once, and the curves are summed a block of corners at a time.

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
BLOCK = 2**18                   # thresholds handled at a time by the metrics
CHUNK_PIXELS = 2**20            # pixels read at a time
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
    (M,): per p = values[j], how many normal scores are < p and how many are == p, (U,)
    each. The normal scores are sorted and
    each block of values is looked up in them, so nothing of size U is made beyond the
    result; numpy arrays, or tensors (on a GPU: sorted and searched there)."""
    on_torch = isinstance(normal, torch.Tensor)
    normal = torch.sort(normal).values if on_torch else np.sort(normal)
    below = np.empty(len(values), _count_dtype(len(normal)))
    at = np.empty_like(below)
    for part in _blocks(len(values)):
        if on_torch:
            block = torch.as_tensor(values[part], device=normal.device, dtype=normal.dtype)
            left, right = (torch.searchsorted(normal, block, side=side).cpu().numpy()
                           for side in ("left", "right"))
        else:
            block = values[part].astype(normal.dtype, copy=False)
            left, right = (np.searchsorted(normal, block, side=side)
                           for side in ("left", "right"))
        below[part], at[part] = left, right - left
    return below, at


def _count_dtype(count: int):
    """The smallest integer type that holds counts up to ``count`` (int32 for most splits)."""
    return np.int32 if count < 2**31 else np.int64


def _distinct(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of sorted ``scores`` (U,) and how many times each occurs (U,),
    found a block at a time (no index array of the size of ``scores``)."""
    new = np.empty(len(scores), bool)
    new[0] = True
    np.not_equal(scores[1:], scores[:-1], out=new[1:])
    values = scores[new]
    starts = np.empty(len(values) + 1, _count_dtype(len(scores)))
    starts[-1], filled = len(scores), 0
    for part in _blocks(len(scores)):
        local = np.flatnonzero(new[part]) + part.start
        starts[filled:filled + len(local)] = local
        filled += len(local)
    return values, np.diff(starts)


def _anomalous_scores(masks, maps, metric: str) -> tuple[np.ndarray, np.ndarray, int]:
    """First pass: the distinct anomalous scores (U,), increasing, how many anomalous pixels
    score each (U,), and the number of pixels."""
    scores, total = [], 0
    for mask_chunk, map_chunk in _pairs(masks, maps):
        mask_chunk = _binary(mask_chunk, metric)                     # (B, H, W) bool
        scores.append(_numpy(_scores(map_chunk))[mask_chunk])
        total += mask_chunk.size
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
    anomalous.sort()
    return *_distinct(anomalous), total


def _region_overlaps(mask_chunk: np.ndarray, score_chunk: np.ndarray, values: np.ndarray,
                     overlap_at: np.ndarray) -> int:
    """Add to ``overlap_at`` (U,), per distinct score, 1 / (region size) for each anomalous
    pixel of these images (B, H, W) that scores it; the number of regions found."""
    regions = 0
    for mask, scores in zip(mask_chunk, score_chunk):
        if mask.any():
            labelled, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
            sizes = np.bincount(labelled.ravel())                    # (n + 1,), 0: normal
            where = np.searchsorted(values, scores[mask])
            np.add.at(overlap_at, where, 1.0 / sizes[labelled[mask]])
            regions += n
    return regions


def _non_finite(maps) -> int:
    return sum(int((~np.isfinite(_numpy(chunk))).sum()) for _, chunk in _chunks(maps))


@dataclass
class PixelCurves:
    """What the ROC and PRO curves of a split are made of, per distinct score p of an
    anomalous pixel, increasing (U,) (module docstring). Each p gives two corners of the
    curves, "score > p" and "score >= p" predicted anomalous; :meth:`corners` lists them a
    block at a time, so the curves are never held whole."""
    thresholds: np.ndarray       # (U,) the distinct anomalous scores p, increasing
    anomalous_at: np.ndarray     # (U,) anomalous pixels scoring p
    normal_below: np.ndarray     # (U,) normal pixels scoring < p
    normal_at: np.ndarray        # (U,) normal pixels scoring p
    overlap_at: np.ndarray       # (U,) sum of 1 / region size over the anomalous pixels at p
                                 # (empty when the regions are not counted)
    normal: int                  # normal pixels
    anomalous: int               # anomalous pixels
    regions: int                 # ground-truth regions (0 when not counted)

    def corners(self):
        """(false positives, true positives, overlap, p) at the corners, highest p first, a
        block of thresholds at a time; false positives, true positives and overlap (2B + 1,)
        start with the last corner of the block before ((0, 0, 0) first), and "score > p",
        "score >= p" alternate; p (B,) is the threshold of the ">=" corners. The last corner
        predicts every pixel anomalous."""
        last = np.zeros(3)
        tp_above, overlap_above = 0, 0.0         # anomalous pixels (overlap) scoring > p
        for part in _blocks(len(self.thresholds))[::-1]:
            down = slice(part.stop - 1, part.start - 1 if part.start else None, -1)
            normal_at = self.normal_at[down]
            fp_at_least = self.normal - self.normal_below[down].astype(np.float64)
            tp_at_least = tp_above + np.cumsum(self.anomalous_at[down], dtype=np.float64)
            overlap_at = self.overlap_at[down] if len(self.overlap_at) else fp_at_least * 0
            overlap_at_least = overlap_above + np.cumsum(overlap_at)
            block = np.empty((3, 2 * len(fp_at_least) + 1))
            block[:, 0] = last
            block[0, 1::2] = fp_at_least - normal_at   # "score > p"
            block[1, 1::2] = tp_at_least - self.anomalous_at[down]
            block[2, 1::2] = overlap_at_least - overlap_at
            block[:, 2::2] = fp_at_least, tp_at_least, overlap_at_least    # "score >= p"
            last = block[:, -1].copy()
            tp_above, overlap_above = tp_at_least[-1], overlap_at_least[-1]
            yield block[0], block[1], block[2], self.thresholds[down]
        final = np.array([self.normal, self.anomalous, self.regions], np.float64)
        yield *np.stack([last, final], axis=1), self.thresholds[:0]

    def auroc(self) -> float:
        return _area_up_to(((fp, tp) for fp, tp, _, _ in self.corners()), 1.0,
                           self.normal, self.anomalous)

    def average_precision(self) -> float:
        """Sum over thresholds of (recall increase) x precision, as scikit-learn defines it."""
        total = 0.0
        for fp, tp, _, _ in self.corners():
            above, at, fp_at = tp[1:-1:2], tp[2::2], fp[2::2]         # (block,) each
            total += float(np.sum((at - above) / self.anomalous * (at / (at + fp_at))))
        return total

    def aupro(self, fpr_limit: float = 0.3) -> float:
        return _area_up_to(((fp, overlap) for fp, _, overlap, _ in self.corners()),
                           fpr_limit, self.normal, self.regions) / fpr_limit

    def f1_max(self) -> tuple[float, float]:
        """Best pixel F1 over the thresholds "score >= p" (F1 can only peak at the score of
        an anomalous pixel), and that p; of equal F1s the lowest p, as :func:`f1_max`."""
        best_f1, best = -1.0, 0.0
        for fp, tp, _, thresholds in self.corners():
            if len(thresholds):
                f1 = 2 * tp[2::2] / (tp[2::2] + fp[2::2] + self.anomalous)  # = 2PR / (P + R)
                last = len(f1) - 1 - int(np.argmax(f1[::-1]))          # the lowest p of a tie
                if f1[last] >= best_f1:
                    best_f1, best = float(f1[last]), float(thresholds[last])
        return best_f1, best


def _blocks(count: int) -> list[slice]:
    """Slices of ``range(count)``, :data:`BLOCK` at a time (temporaries of one block only)."""
    return [slice(start, min(start + BLOCK, count)) for start in range(0, count, BLOCK)]


def pixel_curves(masks, maps, regions: bool = True, metric: str = "pixel metrics",
                 device: str | torch.device | None = None) -> PixelCurves:
    """The exact ROC / PRO curves of anomaly maps (N, H, W) against masks (N, H, W).

    ``regions=False`` skips labelling the ground-truth regions (no AUPRO then). The normal
    pixels are counted on ``device`` (default: where the maps are), a chunk of images at a
    time; the rest runs in numpy. Memory: the maps a chunk at a time, and about 24 bytes
    per distinct anomalous score.
    """
    masks, maps = _as_images(masks), _as_images(maps)
    _check_shapes(masks, maps, metric)
    values, anomalous_at, total = _anomalous_scores(masks, maps, metric)
    if not np.isfinite(values[[0, -1]]).all():
        raise MetricError(f"{metric} is undefined: {_non_finite(maps)} of {total} anomaly-map "
                          f"pixels are non-finite (NaN or inf). {_DIVERGED_HINT}")
    normal_below = np.zeros(len(values), _count_dtype(total))   # per p: normal pixels < p
    normal_at = np.zeros_like(normal_below)                      #        normal pixels == p
    overlap_at, regions_seen = np.zeros(len(values) if regions else 0), 0
    device = torch.device(device) if device is not None else \
        (maps.device if isinstance(maps, torch.Tensor) else torch.device("cpu"))
    gpu = device.type != "cpu"
    for mask_chunk, map_chunk in _pairs(masks, maps):
        score_chunk, mask_bool = _scores(map_chunk), _binary(mask_chunk, metric)
        if gpu:
            on_device = torch.as_tensor(score_chunk).to(device)
            normal = on_device[~torch.as_tensor(mask_bool).to(device)]
        else:
            normal = _numpy(score_chunk)[~mask_bool]
        finite = torch.isfinite(normal).all() if gpu else np.isfinite(normal).all()
        if not finite:
            raise MetricError(f"{metric} is undefined: {_non_finite(maps)} of {total} "
                              f"anomaly-map pixels are non-finite (NaN or inf). {_DIVERGED_HINT}")
        below, at = _count_normal(values, normal)
        del normal
        normal_below += below
        normal_at += at
        del below, at
        if regions:
            regions_seen += _region_overlaps(mask_bool, _numpy(score_chunk), values, overlap_at)
    n_anomalous = int(anomalous_at.sum(dtype=np.int64))
    return PixelCurves(values, anomalous_at, normal_below, normal_at, overlap_at,
                       total - n_anomalous, n_anomalous, regions_seen)


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level AUROC of anomaly maps (N, H, W) against binary masks (N, H, W): the
    probability that an anomalous pixel outscores a normal one, ties counting one half."""
    return pixel_curves(masks, maps, regions=False, metric="pixel AUROC").auroc()


def pixel_average_precision(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level average precision of anomaly maps (N, H, W) against masks (N, H, W), the
    step-wise definition of ``sklearn.metrics.average_precision_score``."""
    return pixel_curves(masks, maps, regions=False, metric="pixel AP").average_precision()


def _area_up_to(blocks, x_max: float, x_scale: float, y_scale: float) -> float:
    """Trapezoid area under y / y_scale against x / x_scale on [0, x_max], from blocks of
    corners (x, y), each starting with the last corner of the block before; x is
    non-decreasing, starts at 0 and ends at or beyond x_max."""
    area = 0.0
    for x, y in blocks:
        x, y = x / x_scale, y / y_scale
        keep = int(np.count_nonzero(x <= x_max))
        area += float(np.sum(np.diff(x[:keep]) * (y[1:keep] + y[:keep - 1]) / 2))
        if keep < len(x):  # add the point at exactly x_max by linear interpolation
            x0, x1, y0, y1 = x[keep - 1], x[keep], y[keep - 1], y[keep]
            return area + float((x_max - x0) * (2 * y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)) / 2)
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
