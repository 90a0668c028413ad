"""Zero-shot and few-shot branches, fusion, and the losses, against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mvfa_lite.method.branches import (
    MemoryBank,
    class_score,
    fuse,
    min_max,
    nearest_cosine_distance,
    patch_logits,
    segmentation_probs,
    zero_shot,
)
from mvfa_lite.method.losses import (
    classification_loss,
    dice_loss,
    focal_loss,
    mvfa_loss,
)
from mvfa_lite.method.model import Features


def test_nearest_cosine_distance_matches_a_brute_force_loop():
    torch.manual_seed(0)
    query, bank = torch.randn(3, 10, 8), torch.randn(37, 8)
    expected = torch.empty(3, 10)
    for b in range(3):
        for n in range(10):
            expected[b, n] = min(1 - F.cosine_similarity(query[b, n], g, dim=0) for g in bank)
    for chunk in (1, 7, 4096):                        # chunking must not change anything
        torch.testing.assert_close(nearest_cosine_distance(query, bank, chunk), expected)


def test_distance_is_zero_for_a_bank_member():
    bank = torch.randn(5, 4)
    assert nearest_cosine_distance(bank[None, 2:3] * 3.0, bank).abs().max() < 1e-6


def test_memory_bank_with_and_without_cls():
    feats = Features(seg=[torch.randn(2, 5, 4)], det=[torch.randn(2, 5, 4)])
    assert len(MemoryBank.from_features([feats, feats], include_cls=True)) == 2 * 2 * 5
    without = MemoryBank.from_features([feats], include_cls=False)
    assert len(without) == 2 * 4
    torch.testing.assert_close(without.seg[0], feats.seg[0][:, 1:].reshape(-1, 4))


def test_few_shot_map_sums_levels_and_upsamples():
    torch.manual_seed(1)
    levels = [torch.randn(2, 1 + 9, 4) for _ in range(3)]
    feats = Features(seg=levels, det=levels)
    bank = MemoryBank.from_features([feats], include_cls=False)
    maps = bank.distance_maps(feats, "seg", size=12)
    assert maps.shape == (2, 12, 12)
    assert maps.abs().max() < 1e-5                    # the query is in the bank at every level
    other = Features(seg=[torch.randn(2, 10, 4) for _ in range(3)], det=levels)
    corners = sum(nearest_cosine_distance(f[:, 1:], b)[:, 0] for f, b in zip(other.seg, bank.seg))
    # align_corners=True: the top-left pixel is exactly the top-left patch
    torch.testing.assert_close(bank.distance_maps(other, "seg", 12)[:, 0, 0], corners)


def test_patch_logits_are_scaled_cosines_without_cls():
    tokens = torch.tensor([[[9.0, 9.0], [2.0, 0.0], [0.0, 3.0]]])        # CLS, two patches
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = patch_logits(tokens, text, temperature=100)
    torch.testing.assert_close(logits, torch.tensor([[[100.0, 0.0], [0.0, 100.0]]]))


def test_class_score_is_the_mean_abnormal_probability():
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]])          # p = 0.5 and 0.75
    torch.testing.assert_close(class_score(logits), torch.tensor([0.625]))


def test_segmentation_probs_upsample_logits_then_softmax():
    logits = torch.randn(2, 16, 2)
    probs = segmentation_probs(logits, size=20)
    assert probs.shape == (2, 2, 20, 20)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 20, 20))
    torch.testing.assert_close(probs[:, :, 0, 0], logits[:, 0].softmax(-1))


def test_zero_shot_sums_levels():
    feats = Features(seg=[torch.randn(2, 10, 4)] * 4, det=[torch.randn(2, 10, 4)] * 4)
    text = F.normalize(torch.randn(4, 2), dim=0)
    maps, scores = zero_shot(feats, text, 100.0, 24)
    assert maps.shape == (2, 24, 24) and scores.shape == (2,)
    assert 0 <= maps.min() and maps.max() <= 4
    torch.testing.assert_close(scores, 4 * class_score(patch_logits(feats.det[0], text, 100.0)))


def test_min_max_and_fusion():
    torch.testing.assert_close(min_max(torch.tensor([2.0, 4.0, 3.0])), torch.tensor([0, 1, 0.5]))
    zero, few = torch.tensor([0.0, 10.0, 5.0]), torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(fuse(zero, few, beta=0.5), torch.tensor([0.0, 0.75, 0.75]))
    torch.testing.assert_close(fuse(zero, few, beta=1.0), min_max(zero))


def test_focal_loss_by_hand():
    # one pixel of each class; p(abnormal) = 0.8 on the abnormal pixel, 0.3 on the normal one
    probs = torch.tensor([[[[0.2, 0.7]], [[0.8, 0.3]]]])                 # (1, 2, 1, 2)
    mask = torch.tensor([[[1.0, 0.0]]])
    s = 1e-5
    pt1 = (1 - s) * 0.8 + s * 0.2 + s                                     # abnormal pixel
    pt0 = (1 - s) * 0.7 + s * 0.3 + s                                     # normal pixel
    expected = (-(1 - pt1) ** 2 * math.log(pt1) - (1 - pt0) ** 2 * math.log(pt0)) / 2
    assert focal_loss(probs, mask).item() == pytest.approx(expected, rel=1e-5)
    perfect = torch.stack([1 - mask, mask], dim=1)
    assert focal_loss(perfect, mask).item() < 1e-8


def test_dice_loss_by_hand():
    prob = torch.tensor([[[0.5, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # 1 - (2 * 1.5 + 1) / (1.5 + 2 + 1)
    assert dice_loss(prob, mask).item() == pytest.approx(1 - 4 / 4.5)
    empty = torch.zeros(1, 2, 2)
    assert dice_loss(empty, empty).item() == pytest.approx(0.0)          # normal image, clean map
    assert dice_loss(torch.full((1, 2, 2), 0.5), empty).item() == pytest.approx(1 - 1 / 3)


def test_bce_on_logits_versus_probabilities():
    score, label = torch.tensor([0.9]), torch.tensor([1])
    assert classification_loss(score, label, "probabilities").item() == pytest.approx(-math.log(0.9), rel=1e-5)
    # the official quirk: sigmoid(0.9) is the "probability"
    assert classification_loss(score, label, "logits").item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.9))), rel=1e-5)


def test_multi_level_loss_parts():
    torch.manual_seed(0)
    feats = Features(seg=[torch.randn(2, 10, 4, requires_grad=True) for _ in range(2)],
                     det=[torch.randn(2, 10, 4, requires_grad=True) for _ in range(2)])
    text = F.normalize(torch.randn(4, 2), dim=0)
    masks, labels = torch.zeros(2, 12, 12), torch.tensor([0, 1])
    masks[1, 3:6, 3:6] = 1
    total, parts = mvfa_loss(feats, text, masks, labels, True, 100.0, "logits")
    torch.testing.assert_close(total.detach(), parts["focal"] + parts["dice"] + parts["bce"])
    expected_bce = sum(classification_loss(class_score(patch_logits(d, text, 100.0)), labels, "logits")
                       for d in feats.det)
    torch.testing.assert_close(parts["bce"], expected_bce.detach())
    no_masks, parts = mvfa_loss(feats, text, masks, labels, False, 100.0, "logits")
    assert parts["focal"] == 0 and parts["dice"] == 0
    no_masks.backward()
    assert all(f.grad is None for f in feats.seg)                         # seg maps unused


def test_low_precision_features_give_close_distances():
    torch.manual_seed(2)
    query, bank = torch.randn(2, 50, 32), torch.randn(300, 32)
    exact = nearest_cosine_distance(query, bank)
    approximate = nearest_cosine_distance(query.bfloat16(), bank)
    assert approximate.dtype == torch.float32
    assert (exact - approximate).abs().max() < 2e-2
