"""Evaluation metrics for anomaly classification (image level) and segmentation (pixel level).

Every function takes numpy arrays or torch tensors (on any device) and returns plain Python
floats. Label convention: 0 = normal, 1 = abnormal; a higher score means "more anomalous".

Image-level metrics delegate to scikit-learn; the pixel-level ones (AUROC, AP, F1-max,
AUPRO), exact and a chunk of images at a time, are in :mod:`.pixel_metrics` and imported
here, so that ``metrics`` names every metric.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)

from ..errors import MetricError
from .pixel_metrics import (  # noqa: F401 (the pixel metrics, named here too)
    _DIVERGED_HINT,
    PixelCurves,
    _numpy,
    aupro,
    pixel_auroc,
    pixel_average_precision,
    pixel_curves,
    pixel_metrics,
    pixel_metrics_absent,
)


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


# --------------------------------------------------------------------------- summary


def summarize(
    labels: ArrayLike,
    image_scores: ArrayLike,
    masks: ArrayLike | None = None,
    maps: ArrayLike | None = None,
    regions: bool = True,
    device=None,
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
    return result | pixel_metrics(masks, maps, regions=regions, device=device)
