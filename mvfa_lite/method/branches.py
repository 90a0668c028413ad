"""The two scoring branches and their fusion.

Zero-shot branch: compare each adapted patch feature with the normal/abnormal text vectors.
Few-shot branch: compare it with a memory bank of adapted features of normal shots; the
cosine distance to the nearest one is the anomaly score. Fusion: min-max normalise each
branch over the test set and mix them, beta * zero + (1 - beta) * few. With ``bounds`` (the
min and max of each branch over a reference set, :func:`branch_bounds`, kept in the
checkpoint at train time) the same mapping is applied to new images, so that one image's
score no longer depends on the others scored with it.

The final image score follows the protocol's rule (:func:`final_scores`):

* ``"paper"`` (the official code): few-shot on a dataset with masks -> the max of the fused
  seg map; few-shot without masks -> the fused det score; zero-shot -> the det score always.
* ``"det"`` (corrected default): always the det score (fused with the few-shot det score
  when a memory bank is given); the seg map is the pixel map.
* ``"seg_max"``: always the max of the pixel map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import IMAGE_SCORE_RULES
from .model import Features


# --- zero-shot branch ------------------------------------------------------------------
def patch_logits(tokens: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """Tokens (B, T, D) with CLS first, text (D, 2) -> patch-text logits (B, N, 2), N = T - 1."""
    patches = F.normalize(tokens[:, 1:].float(), dim=-1)
    return temperature * patches @ text.float()


def _to_image(patch_values: torch.Tensor, size: int) -> torch.Tensor:
    """(B, N, C) on a square grid -> (B, C, size, size), bilinear with aligned corners."""
    b, n, c = patch_values.shape
    grid = int(round(n ** 0.5))
    maps = patch_values.transpose(1, 2).reshape(b, c, grid, grid)
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=True)


def segmentation_probs(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Logits (B, N, 2) -> per-pixel probabilities (B, 2, S, S): upsample, then softmax."""
    return _to_image(logits, size).softmax(dim=1)


def class_score(logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, N, 2) -> image score (B,): the mean abnormal probability over patches."""
    return logits.softmax(dim=-1)[..., 1].mean(dim=1)


def zero_shot(features: Features, text: torch.Tensor, temperature: float, size: int):
    """Sum over levels: abnormal-probability map (B, S, S) of the seg bank and the image
    score (B,) of the det bank."""
    maps = sum(segmentation_probs(patch_logits(f, text, temperature), size)[:, 1]
               for f in features.seg)
    scores = sum(class_score(patch_logits(f, text, temperature)) for f in features.det)
    return maps, scores


# --- few-shot branch -------------------------------------------------------------------
def nearest_cosine_distance(query: torch.Tensor, bank: torch.Tensor,
                            chunk: int = 4096) -> torch.Tensor:
    """min over bank rows of (1 - cos): query (B, N, D), bank (M, D) -> (B, N).

    One matrix product per chunk of query rows keeps memory at chunk x M. Features that
    come from mixed precision (bf16) are compared in 16 bits with fp32 accumulation: fp16 on
    a GPU, bf16 on a CPU; cosines of unit vectors then err by ~1e-3 at 2-10x the speed.
    fp32 features are compared in fp32.
    """
    low_precision = query.dtype in (torch.bfloat16, torch.float16)
    flat = F.normalize(query.reshape(-1, query.shape[-1]).float(), dim=-1, eps=1e-8)
    bank = F.normalize(bank.float(), dim=-1, eps=1e-8)
    if low_precision:
        dtype = torch.float16 if flat.is_cuda else torch.bfloat16
        flat, bank = flat.to(dtype), bank.to(dtype)
    best = torch.cat([(piece @ bank.T).amax(dim=1).float() for piece in flat.split(chunk)])
    return (1 - best).reshape(query.shape[:-1])


class MemoryBank:
    """Adapted features of the (augmented) normal shots, per head and level: (M, D) each.

    ``include_cls`` keeps the CLS token of every shot, as the official code does; the test
    side never has CLS, so the corrected protocol leaves it out.
    """

    def __init__(self, seg: list[torch.Tensor], det: list[torch.Tensor]):
        self.seg, self.det = seg, det

    @classmethod
    def from_features(cls, batches: list[Features], include_cls: bool) -> "MemoryBank":
        start = 0 if include_cls else 1

        def stack(head: str) -> list[torch.Tensor]:
            levels = zip(*(getattr(f, head) for f in batches))
            return [torch.cat([t[:, start:].reshape(-1, t.shape[-1]) for t in level]).float()
                    for level in levels]
        return cls(stack("seg"), stack("det"))

    def __len__(self) -> int:
        return self.seg[0].shape[0]

    def distance_maps(self, features: Features, head: str, size: int,
                      chunk: int = 4096) -> torch.Tensor:
        """Sum over levels of the nearest-neighbour distance, upsampled: (B, S, S)."""
        total = 0
        for query, bank in zip(getattr(features, head), getattr(self, head)):
            distance = nearest_cosine_distance(query[:, 1:], bank, chunk)      # (B, N)
            total = total + _to_image(distance.unsqueeze(-1), size)[:, 0]
        return total


def few_shot(features: Features, bank: MemoryBank, size: int, chunk: int = 4096):
    """Seg-bank distance map (B, S, S) and det-bank image score (B,) = mean of its map."""
    return (bank.distance_maps(features, "seg", size, chunk),
            bank.distance_maps(features, "det", size, chunk).mean(dim=(1, 2)))


# --- fusion ----------------------------------------------------------------------------
BRANCH_KEYS = ("zero_map", "zero_det", "few_map", "few_det")


def branch_bounds(raw: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """The [min, max] of each raw branch output (BRANCH_KEYS present in ``raw``) over a set."""
    return {key: [float(raw[key].min()), float(raw[key].max())]
            for key in BRANCH_KEYS if raw.get(key) is not None}


def min_max(values: torch.Tensor, bounds=None, in_place: bool = False) -> torch.Tensor:
    """Scale to [0, 1] with one min and one max over the whole tensor (the test set), or
    with given ``bounds`` = (min, max) of a reference set (values may then leave [0, 1]);
    ``in_place``: overwrite ``values`` (the same numbers, no copy of a whole test set)."""
    low, high = (values.min(), values.max()) if bounds is None else \
        (torch.tensor(float(b)) for b in bounds)
    if in_place:
        return values.sub_(low).div_((high - low).clamp_min(1e-12))
    return (values - low) / (high - low).clamp_min(1e-12)


def fuse(zero: torch.Tensor, few: torch.Tensor, beta: float = 0.5, zero_bounds=None,
         few_bounds=None, in_place: bool = False) -> torch.Tensor:
    """beta * normalised zero-shot + (1 - beta) * normalised few-shot; ``in_place``: the
    result overwrites ``zero`` and ``few`` is used up (the same numbers)."""
    if in_place:
        return min_max(zero, zero_bounds, True).mul_(beta).add_(
            min_max(few, few_bounds, True).mul_(1 - beta))
    return beta * min_max(zero, zero_bounds) + (1 - beta) * min_max(few, few_bounds)


def final_scores(zero_map: torch.Tensor, zero_det: torch.Tensor, few_map: torch.Tensor | None,
                 few_det: torch.Tensor | None, has_masks: bool, rule: str, beta: float,
                 bounds: dict | None = None, in_place: bool = False, clip: bool | None = None):
    """Maps (N, S, S) and det scores (N,) of a whole test set, per branch (few-shot ones None
    without a memory bank) -> (image scores (N,), pixel maps (N, S, S)) by ``rule``.
    ``bounds``: fixed normalisation (:func:`branch_bounds` of a reference set) instead of
    this set's own; the maps are then clipped to [0, 1] (``clip``, default: when ``bounds``
    are given), the image scores are not.
    ``in_place``: the maps become the result (no copies of the test set's maps)."""
    if rule not in IMAGE_SCORE_RULES:               # MVFAConfig.validate refuses these first
        raise ValueError(f"image_score must be one of {IMAGE_SCORE_RULES}, got {rule!r}")
    given = bounds or {}
    few = few_map is not None
    if few:
        maps = fuse(zero_map, few_map, beta, given.get("zero_map"), given.get("few_map"),
                    in_place)
        det = fuse(zero_det, few_det, beta, given.get("zero_det"), given.get("few_det"))
    else:
        maps, det = min_max(zero_map, given.get("zero_map"), in_place), zero_det
    use_map_max = rule == "seg_max" or (rule == "paper" and few and has_masks)
    scores = maps.flatten(1).amax(dim=1) if use_map_max else det
    clip = bool(bounds) if clip is None else clip
    return scores, (maps.clamp(0, 1) if clip else maps)
