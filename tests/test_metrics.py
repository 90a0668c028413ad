"""Tests for mvfa_lite.protocols.metrics: agreement with scikit-learn, hand-computed cases, bad input."""

import numpy as np
import pytest
import torch
from metric_cases import CASES, reference_aupro
from sklearn.metrics import average_precision_score, roc_auc_score

from mvfa_lite.errors import MetricError
from mvfa_lite.protocols import metrics, pixelstore
from mvfa_lite.protocols import pixel_metrics as pixel_metrics_module
from mvfa_lite.protocols.metrics import (
    aupro,
    average_precision,
    f1_max,
    image_auroc,
    pixel_auroc,
    pixel_average_precision,
    pixel_metrics,
    pixel_metrics_absent,
    summarize,
)

# Hand-computed image case. Scores sorted high to low: 0.8 (1), 0.4 (0), 0.35 (1), 0.1 (0).
HAND_LABELS = np.array([0, 0, 1, 1])
HAND_SCORES = np.array([0.1, 0.4, 0.35, 0.8])


def random_pixels(seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Masks (6, 32, 32) with ~20% anomalous pixels and maps that weakly separate them."""
    rng = np.random.default_rng(seed)
    masks = rng.random((6, 32, 32)) < 0.2
    maps = rng.normal(size=masks.shape) + 0.7 * masks
    if ties:
        maps = np.round(maps, 1)  # about 60 distinct values: many ties across classes
    return masks, maps


def two_regions(gap: int) -> np.ndarray:
    """One 8x8 mask holding a 1-pixel region at (1, 1) and a 3x3 block starting at (1 + gap, 1 + gap)."""
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[1, 1] = 1
    mask[1 + gap : 4 + gap, 1 + gap : 4 + gap] = 1
    return mask


# --------------------------------------------------------------------------- image level


@pytest.mark.parametrize("seed", range(5))
def test_image_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=50)
    labels[:2] = [0, 1]  # both classes present
    scores = rng.random(50) + 0.3 * labels
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )


def test_image_auroc_hand_computed():
    # Positive/negative pairs ranked correctly: 0.35>0.1, 0.8>0.1, 0.8>0.4 (not 0.35>0.4) -> 3/4.
    assert image_auroc(HAND_LABELS, HAND_SCORES) == pytest.approx(0.75)


def test_average_precision_hand_computed():
    # Recall steps at 0.8 (precision 1/1) and 0.35 (precision 2/3): 0.5 * 1 + 0.5 * 2/3.
    assert average_precision(HAND_LABELS, HAND_SCORES) == pytest.approx(0.5 + 1 / 3)


def test_image_auroc_separable_and_reversed():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    assert image_auroc(labels, scores) == 1.0
    assert image_auroc(labels, -scores) == 0.0
    assert average_precision(labels, scores) == 1.0


def test_f1_max_hand_computed():
    # Threshold 0.8: P=1, R=1/2, F1=2/3. 0.4: P=1/2, R=1/2, F1=1/2.
    # 0.35: P=2/3, R=1, F1=0.8 (best). 0.1: P=1/2, R=1, F1=2/3.
    f1, threshold = f1_max(HAND_LABELS, HAND_SCORES)
    assert f1 == pytest.approx(0.8)
    assert threshold == pytest.approx(0.35)
    assert isinstance(f1, float) and isinstance(threshold, float)


def test_pixel_f1_max_hand_computed():
    # 8 pixels, 3 anomalous (scores 0.9, 0.6, 0.3); normal 0.7, 0.5, 0.2, 0.1, 0.1.
    # F1 = 2 TP / (TP + FP + 3). ">= 0.9": TP 1, FP 0: 2/4 = 0.5; ">= 0.6": TP 2, FP 1: 4/6;
    # ">= 0.3": TP 3, FP 2: 6/8 = 0.75 (best); ">= 0.1": TP 3, FP 5: 6/11.
    masks = np.array([[[1, 0, 1, 0], [0, 1, 0, 0]]], dtype=bool)
    maps = np.array([[[0.9, 0.7, 0.6, 0.5], [0.2, 0.3, 0.1, 0.1]]])
    f1, threshold = metrics.pixel_curves(masks, maps, regions=False).f1_max()
    assert (f1, threshold) == (pytest.approx(0.75), pytest.approx(0.3))
    result = metrics.pixel_metrics(masks, maps)
    assert (result["pixel_f1_max"], result["pixel_f1_threshold"]) == (f1, threshold)
    # image level on the same 8 values: the same definition gives the same answer
    assert f1_max(masks.ravel(), maps.ravel()) == (pytest.approx(f1), pytest.approx(threshold))


@pytest.mark.parametrize("case", sorted(CASES))
def test_pixel_f1_max_matches_the_image_definition(case):
    masks, maps = CASES[case](3)
    f1, threshold = metrics.pixel_curves(masks, maps, regions=False).f1_max()
    expected_f1, expected_threshold = f1_max(masks.ravel(), maps.ravel())
    assert f1 == pytest.approx(expected_f1, rel=1e-9)
    assert threshold == pytest.approx(expected_threshold, rel=1e-9)


def test_metrics_return_python_floats():
    assert type(image_auroc(HAND_LABELS, HAND_SCORES)) is float
    assert type(average_precision(HAND_LABELS, HAND_SCORES)) is float
    masks, maps = random_pixels(0)
    assert type(pixel_auroc(masks, maps)) is float
    assert type(pixel_average_precision(masks, maps)) is float
    assert type(aupro(masks, maps)) is float


# --------------------------------------------------------------------------- pixel level


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", range(2))
def test_pixel_metrics_match_sklearn(case, seed):
    # outliers, heavy tails, ties, a narrow normal range: exact on every distribution
    masks, maps = CASES[case](seed)
    flat_masks, flat_maps = masks.ravel(), maps.ravel()
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(flat_masks, flat_maps), abs=1e-9)
    assert pixel_average_precision(masks, maps) == pytest.approx(
        average_precision_score(flat_masks, flat_maps), abs=1e-9
    )


@pytest.mark.parametrize("seed", range(3))
def test_pixel_metrics_on_random_ties_match_sklearn(seed):
    masks, maps = random_pixels(seed, ties=True)
    flat_masks, flat_maps = masks.ravel(), maps.ravel()
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(flat_masks, flat_maps), abs=1e-9)
    assert pixel_average_precision(masks, maps) == pytest.approx(
        average_precision_score(flat_masks, flat_maps), abs=1e-9
    )


def test_one_far_outlier_costs_only_its_own_pairs():
    # Anomalies all score above the normal pixels except one normal outlier at 1e6: it
    # outranks every anomalous pixel, so AUROC = 1 - 1 / (normal pixels), not 0.5.
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 2:5, 2:5] = True
    maps = masks + 0.1 * np.random.default_rng(0).random(masks.shape)
    maps[1, 7, 7] = 1e6
    assert pixel_auroc(masks, maps) == pytest.approx(1 - 1 / 119, abs=1e-12)


def test_pixel_metrics_accept_uint8_masks_float32_maps_and_tensors():
    masks, maps = random_pixels(7)
    expected = roc_auc_score(masks.ravel(), maps.astype(np.float32).ravel())
    as_uint8_and_float32 = pixel_auroc(masks.astype(np.uint8), maps.astype(np.float32))
    assert as_uint8_and_float32 == pytest.approx(expected, abs=1e-12)
    as_tensors = pixel_metrics(torch.from_numpy(masks), torch.from_numpy(maps))
    assert as_tensors == pytest.approx(pixel_metrics(masks, maps), abs=1e-12)


@pytest.mark.parametrize("case", ["ties", "outlier"])
def test_the_gpu_code_path_counts_like_the_numpy_one(case):
    # normal pixels on a GPU are counted with torch; that branch runs here on CPU tensors
    masks, maps = CASES[case](0)
    normal, values = maps[~masks], np.unique(maps[masks])
    below, at = pixel_metrics_module._count_normal(values, normal)
    with_torch = pixel_metrics_module._count_normal(values, torch.from_numpy(normal))
    np.testing.assert_array_equal(with_torch[0], below)
    np.testing.assert_array_equal(with_torch[1], at)
    # against counting by hand, with fewer and with more normal pixels than scores
    for some in (normal, normal[: len(values) // 2]):
        below, at = pixel_metrics_module._count_normal(values, some)
        np.testing.assert_array_equal(below, [(some < p).sum() for p in values])
        np.testing.assert_array_equal(at, [(some == p).sum() for p in values])


@pytest.mark.parametrize("case", ["ties", "outlier", "whole-image region"])
def test_chunked_metrics_equal_one_chunk(monkeypatch, case):
    # chunks of one image each (as a large split is read) and the curves summed 7 corners
    # at a time give the same metrics as one chunk and one block
    masks, maps = CASES[case](0)
    whole = pixel_metrics(masks, maps)
    monkeypatch.setattr(pixel_metrics_module, "CHUNK_PIXELS", 1)
    monkeypatch.setattr(pixel_metrics_module, "BLOCK", 7)
    assert pixel_metrics(masks, maps) == pytest.approx(whole, abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (maps on the device)")
def test_pixel_metrics_on_the_gpu_equal_the_cpu():
    masks, maps = CASES["ties"](0)
    on_gpu = pixel_metrics(torch.from_numpy(masks).cuda(), torch.from_numpy(maps).cuda())
    assert on_gpu == pytest.approx(pixel_metrics(masks, maps), abs=1e-9)


def test_pixel_auroc_separable_and_reversed():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 2:5, 2:5] = True
    maps = masks + 0.1 * np.random.default_rng(0).random(masks.shape)  # anomalies all above 1
    assert pixel_auroc(masks, maps) == 1.0
    assert pixel_auroc(masks, -maps) == 0.0
    assert pixel_average_precision(masks, maps) == 1.0


def test_pixel_auroc_constant_map_is_one_half():
    masks, _ = random_pixels(0)
    assert pixel_auroc(masks, np.full(masks.shape, 3.0)) == 0.5


def test_pixel_metrics_shares_one_sort_and_agrees_with_each_metric():
    masks, maps = random_pixels(3)
    assert pixel_metrics(masks, maps) == pytest.approx(
        {"pixel_auroc": pixel_auroc(masks, maps), "pixel_ap": pixel_average_precision(masks, maps),
         "aupro": aupro(masks, maps),
         **dict(zip(("pixel_f1_max", "pixel_f1_threshold"), f1_max(masks.ravel(), maps.ravel())))},
        abs=1e-12)


# --------------------------------------------------------------------------- AUPRO


@pytest.mark.parametrize("case", CASES)
def test_aupro_matches_the_definition(case):
    # whole-image and border-touching regions, outliers, ties, ... against a slow
    # one-threshold-at-a-time implementation of the MVTec AD definition
    masks, maps = CASES[case](0)
    assert aupro(masks, maps) == pytest.approx(reference_aupro(masks, maps), abs=1e-9)
    assert aupro(masks, maps, fpr_limit=0.05) == pytest.approx(
        reference_aupro(masks, maps, fpr_limit=0.05), abs=1e-9)


def test_aupro_perfect_map_is_one():
    # Map == mask: every threshold above 0 catches all regions with no false positives,
    # so the curve is (0, 0) -> (0, 1) -> (1, 1) and the area up to 0.3 is 0.3 -> 1.0.
    masks = np.zeros((3, 16, 16), dtype=np.uint8)
    masks[0, 2:6, 2:6] = 1
    masks[1, 8:12, 3:15] = 1
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0, abs=1e-12)


def test_aupro_constant_map():
    # A constant map puts every pixel above every threshold (FPR 1, PRO 1) and none below,
    # so the curve is the diagonal (0, 0) -> (1, 1): area 0.3**2 / 2, normalised 0.15.
    masks = np.zeros((2, 16, 16), dtype=np.uint8)
    masks[0, 4:8, 4:8] = 1
    assert aupro(masks, np.full(masks.shape, 0.2)) == pytest.approx(0.15, abs=1e-12)
    assert aupro(masks, np.full(masks.shape, 0.2), fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)


def test_aupro_one_of_two_regions_detected():
    # Region A (1 pixel) scores 1, region B (3x3 block) scores 0, normal pixels 0.5.
    # Threshold 1: only A is caught  -> FPR 0, PRO 1/2.
    # Threshold 0.5: normals also fire -> FPR 1, PRO 1/2.   Threshold 0: (1, 1).
    # PRO is 1/2 on the whole of [0, 0.3]: normalised area 0.5.
    mask = two_regions(gap=2)  # block at (3..5, 3..5): not touching (1, 1)
    masks = np.stack([mask, np.zeros_like(mask)])  # second image: all normal
    maps = np.where(masks == 1, 0.0, 0.5)
    maps[0, 1, 1] = 1.0
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-12)


def test_aupro_uses_8_connectivity():
    # With gap=1 the block starts at (2, 2), touching (1, 1) only diagonally: under
    # 8-connectivity they form ONE region of 10 pixels, so catching (1, 1) alone gives
    # PRO 1/10 (not 1/2 as with two regions) and the normalised area is 0.1.
    mask = two_regions(gap=1)
    masks = mask[None]
    maps = np.where(masks == 1, 0.0, 0.5)
    maps[0, 1, 1] = 1.0
    assert aupro(masks, maps) == pytest.approx(0.1, abs=1e-12)


def test_aupro_tie_between_a_region_and_a_normal_pixel_is_a_straight_segment():
    # One 1x4 image: region A (score 1), normal (0.5), region B (0.5), normal (0).
    # Threshold 1: (FPR 0, PRO 1/2). Threshold 0.5 ("score >= t" catches B and the tied
    # normal together): (1/2, 1). Threshold 0: (1, 1). At FPR 0.3 the straight segment is
    # at PRO 0.5 + 0.5 * 0.3 / 0.5 = 0.8: area 0.3 * (0.5 + 0.8) / 2, normalised 0.65.
    masks = np.array([[[1, 0, 1, 0]]])
    maps = np.array([[[1.0, 0.5, 0.5, 0.0]]])
    assert aupro(masks, maps) == pytest.approx(0.65, abs=1e-12)


def test_aupro_counts_a_region_covering_a_whole_image():
    # Image 0 is anomalous everywhere (one 16-pixel region, score 0.9); image 1 has a
    # 1-pixel region in its corner (score 0.2) and 15 normal pixels at 0.5.
    # Threshold 0.9: (FPR 0, PRO 1/2); 0.5: (1, 1/2); 0.2: (1, 1). Area up to 0.3: 0.5.
    # (Dropping the whole-image region, as anomalib 2.7.0 does, would give 0.)
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0] = True
    masks[1, 0, 0] = True
    maps = np.where(masks, 0.9, 0.5)
    maps[1, 0, 0] = 0.2
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-12)


def test_aupro_random_map_is_near_chance():
    # Scores independent of the mask: PRO(t) ~ FPR(t), so the normalised area ~ 0.3 / 2.
    rng = np.random.default_rng(0)
    masks = np.zeros((8, 32, 32), dtype=np.uint8)
    masks[:, 8:20, 8:20] = 1
    assert aupro(masks, rng.random(masks.shape)) == pytest.approx(0.15, abs=0.02)


def test_aupro_rejects_bad_settings():
    masks, maps = random_pixels(0)
    with pytest.raises(MetricError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=0.0)


# --------------------------------------------------------------------------- bad input

IMAGE_METRICS = [image_auroc, average_precision, f1_max]
PIXEL_METRICS = [pixel_auroc, pixel_average_precision, aupro]


@pytest.mark.parametrize("metric", IMAGE_METRICS)
def test_image_only_one_class(metric):
    with pytest.raises(MetricError, match=r"only normal images \(30 of 30\).*Ungood/img"):
        metric(np.zeros(30), np.random.default_rng(0).random(30))
    with pytest.raises(MetricError, match=r"only abnormal images \(4 of 4\)"):
        metric(np.ones(4), np.arange(4.0))


@pytest.mark.parametrize("metric", IMAGE_METRICS)
def test_image_non_finite_scores(metric):
    scores = np.array([0.1, np.nan, 0.3, np.inf])
    with pytest.raises(MetricError, match=r"2 of 4 image scores are non-finite.*learning rate"):
        metric(HAND_LABELS, scores)


@pytest.mark.parametrize("metric", IMAGE_METRICS)
def test_image_shape_mismatch(metric):
    with pytest.raises(MetricError, match=r"shape \(4,\).*shape \(3,\)"):
        metric(HAND_LABELS, HAND_SCORES[:3])


def test_image_labels_must_be_binary():
    with pytest.raises(MetricError, match=r"labels 0 \(normal\) or 1 \(abnormal\).*\[0, 1, 2\]"):
        image_auroc(np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]))


def test_image_empty():
    with pytest.raises(MetricError, match="empty"):
        image_auroc(np.array([]), np.array([]))


@pytest.mark.parametrize("metric", PIXEL_METRICS)
def test_pixel_only_one_class(metric):
    maps = np.random.default_rng(0).random((2, 4, 4))
    with pytest.raises(MetricError, match=r"only normal pixels \(32 of 32\)"):
        metric(np.zeros((2, 4, 4)), maps)
    with pytest.raises(MetricError, match=r"only anomalous pixels \(32 of 32\)"):
        metric(np.ones((2, 4, 4)), maps)


@pytest.mark.parametrize("metric", PIXEL_METRICS)
def test_pixel_non_finite_maps(metric):
    masks, maps = random_pixels(0)
    maps[0, 0, :3] = [np.nan, np.inf, -np.inf]
    with pytest.raises(MetricError, match=r"3 of 6144 anomaly-map pixels are non-finite.*fp32"):
        metric(masks, maps)


@pytest.mark.parametrize("metric", PIXEL_METRICS)
def test_pixel_shape_mismatch(metric):
    masks, maps = random_pixels(0)
    with pytest.raises(MetricError, match=r"shape \(6, 32, 32\).*shape \(6, 16, 16\)"):
        metric(masks, maps[:, :16, :16])
    with pytest.raises(MetricError, match=r"shape \(6, 1, 32, 32\)"):
        metric(masks[:, None], maps[:, None])  # 4-D: channel axis not squeezed


@pytest.mark.parametrize("metric", PIXEL_METRICS)
def test_pixel_masks_must_be_binary(metric):
    masks, maps = random_pixels(0)
    with pytest.raises(MetricError, match=r"binary masks.*\[0, 255\]"):
        metric(masks.astype(np.uint8) * 255, maps)


# --------------------------------------------------------------------------- summarize

IMAGE_KEYS = {"image_auroc", "image_ap", "image_f1_max", "image_f1_threshold"}
PIXEL_KEYS = {"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_f1_threshold", "aupro"}


def test_summarize_image_only():
    result = summarize(HAND_LABELS, HAND_SCORES)
    assert set(result) == IMAGE_KEYS
    assert result["image_auroc"] == pytest.approx(0.75)
    assert result["image_ap"] == pytest.approx(0.5 + 1 / 3)
    assert (result["image_f1_max"], result["image_f1_threshold"]) == pytest.approx((0.8, 0.35))
    assert all(type(v) is float for v in result.values())


def test_summarize_with_masks():
    masks, maps = random_pixels(1)
    labels = masks.reshape(6, -1).any(axis=1).astype(int)
    labels[0] = 0  # every random mask has anomalies; make one image normal for image metrics
    scores = maps.reshape(6, -1).max(axis=1)
    result = summarize(labels, scores, masks, maps)
    assert set(result) == IMAGE_KEYS | PIXEL_KEYS
    assert result["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps))
    assert result["pixel_ap"] == pytest.approx(pixel_average_precision(masks, maps))
    assert result["aupro"] == pytest.approx(aupro(masks, maps))
    # model selection asks for the pixel AUROC only: the same values, no region labelling
    without_regions = summarize(labels, scores, masks, maps, regions=False)
    assert without_regions == {k: v for k, v in result.items() if k != "aupro"}


def test_summarize_skips_pixel_metrics_without_anomalous_pixels():
    # Classification-only datasets may pass all-zero masks: pixel metrics are left out.
    masks = np.zeros((4, 8, 8), dtype=np.uint8)
    result = summarize(HAND_LABELS, HAND_SCORES, masks, np.zeros((4, 8, 8)))
    assert set(result) == IMAGE_KEYS
    assert pixel_metrics_absent(masks) == ("all 4 test masks are empty: no image has an "
                                           "annotated anomalous pixel to localise")
    assert "no ground-truth masks" in pixel_metrics_absent(None)
    masks[3, 2, 2] = 1
    assert pixel_metrics_absent(masks) is None


def test_summarize_masks_without_maps():
    masks = np.zeros((4, 8, 8), dtype=np.uint8)
    masks[3, 2:4, 2:4] = 1
    with pytest.raises(MetricError, match="maps is None"):
        summarize(HAND_LABELS, HAND_SCORES, masks)
