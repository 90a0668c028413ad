"""Evaluation metrics for anomaly classification (image level) and segmentation (pixel level).

Every function takes numpy arrays (or anything ``np.asarray`` accepts, such as CPU tensors)
and returns plain Python floats. Label convention: 0 = normal, 1 = abnormal; a higher score
means "more anomalous".

Image-level metrics delegate to scikit-learn. Pixel-level test sets are too large for that
(3,715 images of 240x240 are 214 M pixels), so :func:`pixel_auroc` and
:func:`pixel_average_precision` reduce the scores to a histogram first, processing a few
images at a time so that memory stays bounded:

* the scores are min-max scaled and split into ``PIXEL_BINS`` (2**20) equal-width bins;
* per bin we count normal and anomalous pixels with ``np.bincount``;
* the ROC / precision-recall curve is then built from the bins, highest bin first.

The only approximation is that two pixels falling in the same bin are treated as tied
(equal scores are always tied, exactly as scikit-learn does). On random data the result
agrees with scikit-learn to within 1e-6 for AUROC and 1e-5 for AP.

:func:`aupro` follows the MVTec AD per-region-overlap definition; see its docstring.
"""

from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from .errors import MetricError

PIXEL_BINS = 2**20  # score bins for the pixel-level AUROC / AP histograms
_CHUNK_PIXELS = 2**22  # pixels processed at once (about 32 MiB per float64 temporary)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # structuring element for ndimage.label

_DIVERGED_HINT = (
    "The model produced them (for example, training diverged); "
    "try a lower learning rate or run in fp32."
)


# --------------------------------------------------------------------------- image level


def _check_image_inputs(labels: ArrayLike, scores: ArrayLike, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate image labels and scores; return them as (N,) int and (N,) float64 arrays."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
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


def _chunks(masks: np.ndarray, maps: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (mask, map) slices of a few whole images, about ``_CHUNK_PIXELS`` pixels each."""
    per_image = max(1, masks[0].size)
    step = max(1, _CHUNK_PIXELS // per_image)
    for start in range(0, len(masks), step):
        yield masks[start : start + step], maps[start : start + step]


def _check_pixel_inputs(
    masks: ArrayLike, maps: ArrayLike, metric: str
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Validate masks and maps (both (N, H, W)); return them with the score range (lo, hi).

    One pass over the data, chunk by chunk: checks the mask values, counts non-finite
    scores and anomalous pixels, and finds the minimum and maximum score.
    """
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.ndim != 3 or masks.shape != maps.shape:
        raise MetricError(
            f"{metric} needs one anomaly map per mask: masks have shape {masks.shape} but maps "
            f"have shape {maps.shape}. Pass two arrays of the same shape (N, H, W); squeeze "
            "any channel axis and resize the maps to the mask size."
        )
    if masks.size == 0:
        raise MetricError(f"{metric} is undefined: there are no pixels. Add test images with masks.")
    n_bad = n_pos = 0
    lo, hi = np.inf, -np.inf
    for m, s in _chunks(masks, maps):
        if m.dtype != bool and ((m != 0) & (m != 1)).any():
            found = np.unique(m)[:10].tolist()
            raise MetricError(
                f"{metric} needs binary masks (0 = normal, 1 = anomalous), but found the values "
                f"{found}. Threshold the masks first, e.g. masks > 0.5 (or > 127 for 0-255 images)."
            )
        finite = np.isfinite(s)
        n_bad += int(s.size - finite.sum())
        n_pos += int(np.count_nonzero(m))
        if finite.any():
            lo, hi = min(lo, float(s[finite].min())), max(hi, float(s[finite].max()))
    if n_bad:
        raise MetricError(
            f"{metric} is undefined: {n_bad} of {maps.size} anomaly-map pixels are non-finite "
            f"(NaN or inf). {_DIVERGED_HINT}"
        )
    n = masks.size
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
    return masks, maps, lo, hi


def _pixel_histograms(masks: ArrayLike, maps: ArrayLike, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Count normal and anomalous pixels per score bin; returns (neg, pos), each (PIXEL_BINS,)."""
    masks, maps, lo, hi = _check_pixel_inputs(masks, maps, metric)
    scale = PIXEL_BINS / (hi - lo) if hi > lo else 0.0
    counts = np.zeros(2 * PIXEL_BINS, dtype=np.int64)  # [normal bins | anomalous bins]
    for m, s in _chunks(masks, maps):
        bins = ((s.astype(np.float64).ravel() - lo) * scale).astype(np.int64)  # (n,)
        np.minimum(bins, PIXEL_BINS - 1, out=bins)  # the maximum score lands in the top bin
        bins += PIXEL_BINS * m.ravel().astype(np.int64)
        counts += np.bincount(bins, minlength=2 * PIXEL_BINS)
    return counts[:PIXEL_BINS], counts[PIXEL_BINS:]


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level AUROC of anomaly maps (N, H, W) against binary masks (N, H, W).

    Computed from a ``PIXEL_BINS`` score histogram (see the module docstring): the
    probability that an anomalous pixel outscores a normal one, ties counting one half.
    """
    neg, pos = _pixel_histograms(masks, maps, "pixel AUROC")
    neg, pos = neg.astype(np.float64), pos.astype(np.float64)
    pos_above = pos[::-1].cumsum()[::-1] - pos  # anomalous pixels in strictly higher bins
    return float((neg * (pos_above + 0.5 * pos)).sum() / (neg.sum() * pos.sum()))


def pixel_average_precision(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level average precision of anomaly maps (N, H, W) against masks (N, H, W).

    Same step-wise definition as ``sklearn.metrics.average_precision_score``, sum over
    thresholds of (recall increase) x precision, with the thresholds at the bin edges.
    """
    neg, pos = _pixel_histograms(masks, maps, "pixel AP")
    neg, pos = neg[::-1].astype(np.float64), pos[::-1].astype(np.float64)  # highest bin first
    tp, fp = pos.cumsum(), neg.cumsum()
    hit = pos > 0  # only bins with anomalous pixels raise recall (and there tp > 0)
    precision = tp[hit] / (tp[hit] + fp[hit])
    return float((pos[hit] / tp[-1] * precision).sum())


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) on [0, x_max]; x is non-decreasing, starts at 0, ends >= x_max."""
    keep = int(np.searchsorted(x, x_max, side="right"))  # x[:keep] <= x_max
    xs, ys = x[:keep], y[:keep]
    if keep < len(x):  # add the point at exactly x_max by linear interpolation
        y_at = ys[-1] + (y[keep] - ys[-1]) * (x_max - xs[-1]) / (x[keep] - xs[-1])
        xs, ys = np.append(xs, x_max), np.append(ys, y_at)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2))


def _count_above(hist: np.ndarray) -> np.ndarray:
    """Turn counts by "thresholds passed" k, (..., T + 1), into counts above each threshold, (..., T).

    A pixel is above threshold i when it passed more than i thresholds (k > i).
    """
    return hist[..., ::-1].cumsum(axis=-1)[..., ::-1][..., 1:]


def aupro(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3, num_thresholds: int = 200) -> float:
    """Normalised area under the per-region-overlap (PRO) curve, up to ``fpr_limit``.

    For each of ``num_thresholds`` thresholds t, evenly spaced from the lowest to the
    highest score, a pixel is predicted anomalous when ``score >= t``, and

    * PRO(t) = mean, over every connected ground-truth region (8-connectivity, all images),
      of the fraction of that region's pixels predicted anomalous;
    * FPR(t) = fraction of normal pixels (mask == 0, all images) predicted anomalous.

    The curve runs from (0, 0) to (1, 1), as in the MVTec AD evaluation code; its area for
    FPR in [0, fpr_limit] (trapezoid rule) is divided by ``fpr_limit`` so that a perfect map
    scores 1.0 and a constant map scores fpr_limit / 2.
    """
    if not 0 < fpr_limit <= 1:
        raise MetricError(f"AUPRO needs 0 < fpr_limit <= 1, got {fpr_limit}.")
    if num_thresholds < 2:
        raise MetricError(f"AUPRO needs at least 2 thresholds, got {num_thresholds}.")
    masks, maps, lo, hi = _check_pixel_inputs(masks, maps, "AUPRO")
    thresholds = np.linspace(lo, hi, num_thresholds)  # (T,)
    levels = num_thresholds + 1  # a pixel passes the first k thresholds, k in 0..T

    normal_hist = np.zeros(levels, dtype=np.int64)  # normal pixels by k
    region_hists = []  # one (regions_in_image, levels) array per image with regions
    for m, s in _chunks(masks, maps):
        passed = np.searchsorted(thresholds, s, side="right")  # (n, H, W): #thresholds <= score
        normal_hist += np.bincount(passed[m == 0], minlength=levels)
        for mask, k in zip(m, passed):
            regions, n_regions = ndimage.label(mask, structure=_EIGHT_CONNECTED)  # (H, W)
            if n_regions:
                flat = (regions.astype(np.int64) * levels + k)[regions > 0]
                hist = np.bincount(flat, minlength=(n_regions + 1) * levels)
                region_hists.append(hist.reshape(n_regions + 1, levels)[1:])
    region_hist = np.concatenate(region_hists)  # (R, T + 1)

    fpr = _count_above(normal_hist) / normal_hist.sum()  # (T,), non-increasing in t
    pro = (_count_above(region_hist) / region_hist.sum(axis=1, keepdims=True)).mean(axis=0)  # (T,)
    # Highest threshold first makes both FPR and PRO non-decreasing.
    fpr = np.concatenate(([0.0], fpr[::-1], [1.0]))
    pro = np.concatenate(([0.0], pro[::-1], [1.0]))
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


# --------------------------------------------------------------------------- summary


def summarize(
    labels: ArrayLike,
    image_scores: ArrayLike,
    masks: ArrayLike | None = None,
    maps: ArrayLike | None = None,
) -> dict[str, float]:
    """All metrics in one dict.

    Always: image_auroc, image_ap, image_f1_max, image_f1_threshold. When ``masks`` is given
    and contains anomalous pixels, also pixel_auroc, pixel_ap and aupro (``maps`` required).
    """
    f1, threshold = f1_max(labels, image_scores)
    result = {
        "image_auroc": image_auroc(labels, image_scores),
        "image_ap": average_precision(labels, image_scores),
        "image_f1_max": f1,
        "image_f1_threshold": threshold,
    }
    if masks is None or not np.asarray(masks).any():
        return result
    if maps is None:
        raise MetricError(
            "Pixel metrics need anomaly maps: masks were given but maps is None. "
            "Pass the model's anomaly maps (N, H, W) or leave masks out."
        )
    result["pixel_auroc"] = pixel_auroc(masks, maps)
    result["pixel_ap"] = pixel_average_precision(masks, maps)
    result["aupro"] = aupro(masks, maps)
    return result
