"""Scoring a test set: per-image scores and per-pixel maps, then the metrics.

The model maths lives in method/branches.py, the image-score rule of each protocol too
(:func:`~mvfa_lite.method.branches.final_scores`); this module only loops over batches,
gathers the results and applies that rule.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import MetricError
from ..method.branches import BRANCH_KEYS, MemoryBank, few_shot, final_scores, zero_shot
from ..method.model import MVFA
from ..runtime import autocast, loader_workers, show_progress
from . import metrics
from .pixelstore import PixelStore


@dataclass
class Scores:
    paths: list[str]
    labels: torch.Tensor              # (N,) 0 normal / 1 abnormal (-1 when unknown)
    image_scores: torch.Tensor        # (N,) higher = more anomalous
    maps: PixelStore                  # (N, S, S) pixel anomaly map in [0, 1]
    masks: PixelStore | None          # (N, S, S) ground truth, None without masks
    # raw per-image scores (N,) of each branch; with keep_raw_maps also its raw maps (N, S, S)
    branches: dict[str, torch.Tensor] = field(default_factory=dict)
    # the [min, max] of each raw branch the scores were normalised with (this set's own, or
    # the checkpoint's when scored with fixed bounds); see method.branches.branch_bounds
    bounds: dict[str, list[float]] = field(default_factory=dict)


class StemSet:
    """A labelled set scored many times (model selection after every epoch): its stems, the
    tokens after the first tapped block, depend on no trained weight, so they are computed
    once and each re-scoring runs only the adapted part of the network."""

    def __init__(self, model: MVFA, dataset, batch_size: int = 32):
        self.name = getattr(dataset, "name", "")
        self.has_masks = getattr(dataset, "has_masks", False)
        parts: dict[str, list] = {"stem": [], "mask": [], "label": [], "path": []}
        loader = DataLoader(dataset, batch_size=batch_size,
                            num_workers=loader_workers(model.device))
        for batch in loader:
            with autocast(model.device, model.config.precision):
                parts["stem"].append(model.stem(batch["image"]))
            for key in ("mask", "label", "path"):
                parts[key].append(batch[key])
        self.stems = torch.cat(parts["stem"])                     # (N, T, W) on the device
        self.masks, self.labels = torch.cat(parts["mask"]), torch.cat(parts["label"])
        self.paths = [p for chunk in parts["path"] for p in chunk]

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int):
        for start in range(0, len(self), batch_size):
            part = slice(start, start + batch_size)
            yield {"stem": self.stems[part], "mask": self.masks[part],
                   "label": self.labels[part], "path": self.paths[part]}

    @staticmethod
    def fits(model: MVFA, dataset, budget_gib: float = 4.0) -> bool:
        """Whether the stems of ``dataset`` stay under ``budget_gib`` (bf16 on GPU)."""
        b = model.backbone
        bytes_per_value = 2 if model.device.type == "cuda" else 4
        return len(dataset) * (1 + b.grid ** 2) * b.width * bytes_per_value < budget_gib * 2**30


@torch.no_grad()
def build_memory_bank(model: MVFA, normal_images: torch.Tensor | None = None,
                      batch_size: int = 32, *, stems: torch.Tensor | None = None) -> MemoryBank:
    """Adapted features of normal images (M, 3, S, S), or of their cached ``stems``
    (M, T, W): the few-shot branch's memory."""
    features = []
    with autocast(model.device, model.config.precision):
        if stems is not None:
            features = [model(stem=batch) for batch in stems.split(batch_size)]
        else:
            features = [model(batch.to(model.device)) for batch in normal_images.split(batch_size)]
    return MemoryBank.from_features(features, model.config.bank_includes_cls)


@torch.no_grad()
def score_dataset(model: MVFA, dataset, text: torch.Tensor, bank: MemoryBank | None = None,
                  has_masks: bool | None = None, batch_size: int = 32,
                  num_workers: int | None = None, keep_raw_maps: bool = False,
                  progress: bool = True, description: str = "scoring",
                  bounds: dict | None = None) -> Scores:
    """Run both branches over ``dataset`` (items: dict with image, and label/mask if known).

    ``Scores.maps`` and ``Scores.masks`` are :class:`PixelStore`\\ s (a large split on disk,
    so one batch of maps is in memory at a time; ``.tensor()`` gives all of it).
    ``Scores.branches`` holds each branch's raw image scores; with ``keep_raw_maps`` also its
    raw maps (zero_map, few_map; tensors, in memory), e.g. to re-fuse with another beta
    without scoring again.
    ``bounds``: normalise with these (a checkpoint's calibration) instead of the set's own.
    """
    config, size = model.config, model.config.image_size
    has_masks = getattr(dataset, "has_masks", False) if has_masks is None else has_masks
    if isinstance(dataset, StemSet):
        batches = dataset.batches(batch_size)
    else:
        workers = loader_workers(model.device) if num_workers is None else num_workers
        batches = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                             pin_memory=model.device.type == "cuda")
    # per-image results go into one tensor each, per-pixel ones into a store each (a large
    # split on disk), allocated at the first batch: one batch of maps in memory at a time
    total, filled, paths = len(dataset), 0, []
    raw: dict[str, torch.Tensor | PixelStore] = {}
    low_high: dict[str, list[float]] = {}          # running [min, max] of each raw branch

    def put(key: str, values: torch.Tensor) -> None:
        if key not in raw:
            raw[key] = PixelStore(total, values.shape[1:], values.dtype) if values.dim() == 3 \
                else torch.empty((total, *values.shape[1:]), dtype=values.dtype)
        if isinstance(raw[key], PixelStore):
            raw[key].append(values)
        else:
            raw[key][filled:filled + len(values)] = values
        if key in BRANCH_KEYS and len(values):
            seen = low_high.setdefault(key, [float("inf"), float("-inf")])
            seen[:] = [min(seen[0], float(values.min())), max(seen[1], float(values.max()))]

    for batch in tqdm(batches, desc=description, unit="batch",
                      disable=not show_progress(progress)):
        with autocast(model.device, config.precision):
            features = model(stem=batch["stem"]) if "stem" in batch else \
                model(batch["image"].to(model.device, non_blocking=True))
        zero_map, zero_det = zero_shot(features, text, config.temperature, size)
        put("zero_map", zero_map.float().cpu())
        put("zero_det", zero_det.float().cpu())
        if bank is not None:
            few_map, few_det = few_shot(features, bank, size, config.memory_chunk)
            put("few_map", few_map.float().cpu())
            put("few_det", few_det.float().cpu())
        put("label", torch.as_tensor(batch.get("label", torch.full((len(batch["path"]),), -1))))
        if has_masks:
            put("mask", batch["mask"])
        paths += list(batch["path"])
        filled += len(batch["path"])
    raw = {key: values if isinstance(values, PixelStore) else values[:filled]
           for key, values in raw.items()}
    measured = dict(bounds) if bounds else low_high      # = branch_bounds of the whole set
    image_scores, maps = _fused(raw, has_masks, config, measured, clip=bool(bounds),
                                keep_raw_maps=keep_raw_maps)
    kept = ("zero_det", "few_det") + (("zero_map", "few_map") if keep_raw_maps else ())
    branches = {key: raw[key].tensor() if isinstance(raw[key], PixelStore) else raw[key]
                for key in kept if key in raw}
    return Scores(paths, raw["label"].long(), image_scores, maps, raw.get("mask"), branches,
                  measured)


def _fused(raw: dict, has_masks: bool, config, bounds: dict, clip: bool,
           keep_raw_maps: bool) -> tuple[torch.Tensor, PixelStore]:
    """The image-score rule and the fused maps of the whole set, a chunk of images at a time
    (the set's min and max are known: normalising is then per pixel). The fused maps replace
    the zero-shot store, unless the raw maps are kept."""
    zero, few = raw["zero_map"], raw.get("few_map")
    maps = PixelStore(zero.shape[0], zero.shape[1:], torch.float32) if keep_raw_maps else zero
    scores = []
    for (start, zero_chunk), few_chunk in zip(zero.chunks(), _chunks_of(few)):
        end = start + len(zero_chunk)
        image, fused = final_scores(
            zero_chunk.clone(), raw["zero_det"][start:end], few_chunk,
            raw["few_det"][start:end] if few is not None else None, has_masks,
            config.image_score, config.beta, bounds, in_place=True, clip=clip)
        maps.write(start, fused)
        scores.append(image)
    if keep_raw_maps:
        maps.filled = len(zero)
    return torch.cat(scores) if scores else torch.empty(0), maps


def _chunks_of(store: PixelStore | None):
    """The chunks of ``store`` (copies, fused in place), or None for each chunk without it."""
    if store is None:
        while True:
            yield None
    for _, chunk in store.chunks():
        yield chunk.clone()


def compute_metrics(scores: Scores, device: str | torch.device | None = None,
                    regions: bool = True) -> dict[str, float]:
    """Image metrics always; pixel metrics when ground-truth masks exist (AUPRO, which labels
    every anomalous region, only with ``regions``).

    The pixel metrics count every pixel's score against the anomalous ones: seconds for
    200 M pixels on a CPU, less on a GPU, so they run on ``device`` (default: a CUDA GPU when there is one;
    the CPU if that GPU runs out of memory). The results do not depend on the device.
    """
    finite = torch.isfinite(scores.image_scores)
    if not finite.all():
        raise MetricError(f"{int((~finite).sum())} of {len(finite)} image scores are non-finite "
                          "(NaN or inf): the model diverged. Retrain with a lower learning rate "
                          "or in fp32 (--precision fp32).")
    if scores.masks is None:
        return metrics.summarize(scores.labels, scores.image_scores)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return metrics.summarize(scores.labels, scores.image_scores, scores.masks, scores.maps,
                                 regions=regions, device=device)
    except torch.cuda.OutOfMemoryError:
        return metrics.summarize(scores.labels, scores.image_scores, scores.masks, scores.maps,
                                 regions=regions, device="cpu")


def save_scores(scores: Scores, folder: str | Path, maps: bool = False,
                overlays: list[str] | None = None, threshold: float | None = None) -> Path:
    """Write scores.csv (path, label (-1: unknown), score, raw branch scores; with
    ``threshold``: anomalous (yes when score >= threshold) and the threshold; and the overlay
    picture's file name when ``overlays`` are given) and, optionally, maps.npz."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "scores.csv"
    decided = threshold is not None
    with open(target, "w", newline="") as handle:
        writer = csv.writer(handle)
        per_image = {k: v for k, v in scores.branches.items() if v.dim() == 1}
        writer.writerow(["path", "label", "score", *per_image] + ["anomalous", "threshold"] *
                        decided + ["overlay"] * bool(overlays))
        for i, path in enumerate(scores.paths):
            score = float(scores.image_scores[i])
            writer.writerow([path, int(scores.labels[i]), f"{score:.6g}",
                             *(f"{float(v[i]):.6g}" for v in per_image.values()),
                             *(["yes" if score >= threshold else "no", f"{threshold:.6g}"]
                               if decided else []),
                             *([overlays[i]] if overlays else [])])
    if maps:
        np.savez_compressed(folder / "maps.npz", maps=scores.maps.tensor().half().numpy(),
                            paths=np.array(scores.paths))
    return target
