"""Training the adapters: the few-shot and leave-one-dataset-out zero-shot protocols.

Both protocols share one loop, :func:`fit`, over *sources*: sets of training images that
share an object word (text features) and either have masks or not. Every batch comes from
one source; sources without masks train the classification bank only (the seg optimiser
does not step), as in the official code.

Speed: the blocks before the first adapter do not depend on any trained weight, so for
in-memory sources (the augmented few-shot shots are fixed) their output, the *stem*, is
computed once and reused every epoch.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .config import MVFAConfig
from .data import AUGMENTATIONS_PER_SHOT, augment_shots
from .evaluate import StemSet, build_memory_bank, compute_metrics, score_dataset
from .losses import mvfa_loss
from .model import MVFA
from .prompts import object_name
from .runtime import autocast, grad_scaler, seed_everything, show_progress


class ShotSet(Dataset):
    """Training images held in memory: images (N, 3, S, S), masks (N, S, S), labels (N,)."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor):
        self.images, self.masks, self.labels = images, masks, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i], "label": self.labels[i]}


@dataclass
class Source:
    """One training dataset: its images, its text features (D, 2), whether it has masks."""
    name: str
    data: Dataset
    text: torch.Tensor
    has_masks: bool


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)   # one entry per epoch
    best_epoch: int | None = None                        # None: no selection, last epoch kept
    best_score: float | None = None


def selection_score(metrics: dict) -> float:
    """The official model-selection score: image AUROC (+ pixel AUROC when masks exist)."""
    return metrics["image_auroc"] + metrics.get("pixel_auroc", 0.0)


def fit(model: MVFA, sources: list[Source], *, epochs: int, lr: float, batch_size: int,
        select=None, selections_per_epoch: int = 1, progress: bool = True,
        num_workers: int = 0, cache_stems: bool = True) -> TrainResult:
    """Train the adapter banks on ``sources``.

    ``select``: optional callable returning a score (higher is better); it is called
    ``selections_per_epoch`` times per epoch and the best adapters are kept at the end.
    """
    config, device = model.config, model.device
    generator = seed_everything(config.seed)
    seg_optimizer = torch.optim.Adam(model.banks.seg.parameters(), lr=lr, betas=config.betas)
    det_optimizer = torch.optim.Adam(model.banks.det.parameters(), lr=lr, betas=config.betas)
    scaler = grad_scaler(device, config.precision)   # loss scaling for fp16, else a no-op
    stems = [_stems(model, s.data, batch_size) if cache_stems and isinstance(s.data, ShotSet)
             else None for s in sources]
    result, best_state = TrainResult(), None
    n_batches = sum(math.ceil(len(s.data) / batch_size) for s in sources)
    # the batches after which the selection set is scored: evenly spread over the epoch
    select_after = {round(n_batches * (i + 1) / selections_per_epoch) - 1
                    for i in range(selections_per_epoch)}
    bar = tqdm(total=epochs * n_batches, desc="training", unit="batch",
               disable=not show_progress(progress))
    model.banks.train()
    for epoch in range(epochs):
        totals, seen = {}, 0
        for step, (k, batch) in enumerate(_batches(sources, stems, batch_size, generator,
                                                   num_workers)):
            source = sources[k]
            masks = batch["mask"].to(device, non_blocking=True).float()
            labels = batch["label"].to(device, non_blocking=True)
            with autocast(device, config.precision):
                features = model(stem=batch["stem"].to(device)) if "stem" in batch \
                    else model(batch["image"].to(device, non_blocking=True))
            loss, parts = mvfa_loss(features, source.text, masks, labels, source.has_masks,
                                    config.temperature, config.bce_on)
            seg_optimizer.zero_grad(set_to_none=True)
            det_optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(det_optimizer)
            if source.has_masks:
                scaler.step(seg_optimizer)
            scaler.update()
            for name, value in {"loss": loss.detach(), **parts}.items():
                totals[name] = totals.get(name, 0) + value * len(labels)
            seen += len(labels)
            bar.update()
            if select is not None and step in select_after:
                score = select()
                model.banks.train()
                if result.best_score is None or score >= result.best_score:
                    result.best_score, result.best_epoch = score, epoch + 1
                    best_state = copy.deepcopy(model.banks.state_dict())
        result.history.append({"epoch": epoch + 1,
                               **{name: float(total) / seen for name, total in totals.items()}})
        bar.set_postfix(loss=f"{result.history[-1]['loss']:.4f}")
    bar.close()
    model.banks.eval()
    if best_state is not None:
        model.banks.load_state_dict(best_state)
    return result


def _stems(model: MVFA, data: ShotSet, batch_size: int) -> torch.Tensor:
    """Stem tokens (N, T, W) of every image, computed once (no trained weight involved)."""
    with autocast(model.device, model.config.precision):
        return torch.cat([model.stem(images.to(model.device))
                          for images in data.images.split(batch_size)])


def _batches(sources, stems, batch_size, generator, num_workers):
    """Yield (source index, batch dict) for one epoch: each source shuffled and cut into
    batches, the batches of all sources visited in one shuffled order."""
    plan = []
    for k, source in enumerate(sources):
        order = torch.randperm(len(source.data), generator=generator)
        plan += [(k, chunk) for chunk in order.split(batch_size)]
    plan = [plan[i] for i in torch.randperm(len(plan), generator=generator)]
    loaders = [None if stems[k] is not None or isinstance(s.data, ShotSet)
               else iter(DataLoader(s.data, num_workers=num_workers,
                                    batch_sampler=[c.tolist() for j, c in plan if j == k]))
               for k, s in enumerate(sources)]
    for k, chunk in plan:
        data = sources[k].data
        if loaders[k] is not None:
            yield k, next(loaders[k])
            continue
        batch = {"mask": data.masks[chunk], "label": data.labels[chunk]}
        if stems[k] is not None:
            batch["stem"] = stems[k][chunk.to(stems[k].device)]
        else:
            batch["image"] = data.images[chunk]
        yield k, batch


def _cached(model: MVFA, selection_set):
    """The selection set with its stems precomputed, when they fit in memory."""
    return StemSet(model, selection_set) if StemSet.fits(model, selection_set) else selection_set


# --- the two protocols ---------------------------------------------------------------
def shot_set(images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
             augment: bool) -> ShotSet:
    """The few-shot training set: the shots, x11 augmented when ``augment``."""
    if augment:
        images, masks = augment_shots(images, masks)
        labels = labels.repeat(AUGMENTATIONS_PER_SHOT)
    return ShotSet(images, masks, labels)


def normal_bank_images(shots: ShotSet) -> torch.Tensor:
    """The images of the normal shots (with their augmentations): the memory bank's source."""
    return shots.images[shots.labels == 0]


def train_few_shot(model: MVFA, support, *, selection_set=None, progress: bool = True,
                   epochs: int | None = None) -> tuple[TrainResult, ShotSet]:
    """Few-shot protocol: adapt on k normal (+ k abnormal) shots of one dataset.

    ``selection_set``: evaluated after every epoch (with a memory bank rebuilt from the
    normal shots) to keep the best epoch; the paper protocol passes the test set here.
    Returns the training result and the shot set (whose normal images make the bank).
    """
    config = model.config
    loaded = support.load_all(progress=False)
    shots = shot_set(loaded["image"], loaded["mask"], loaded["label"], config.augment)
    text = model.text_features(object_name(support.name))
    select = None
    if selection_set is not None:
        selection_set = _cached(model, selection_set)

        def select():
            bank = build_memory_bank(model, normal_bank_images(shots))
            scores = score_dataset(model, selection_set, text, bank, progress=False)
            return selection_score(compute_metrics(scores))
    source = Source(support.name, shots, text, support.has_masks)
    result = fit(model, [source], epochs=epochs or config.epochs, lr=config.lr,
                 batch_size=config.batch_size, select=select, progress=progress)
    return result, shots


def train_zero_shot(model: MVFA, sources: list, *, target_name: str | None = None,
                    selection_set=None, progress: bool = True, epochs: int | None = None,
                    num_workers: int = 0) -> TrainResult:
    """Leave-one-dataset-out protocol: adapt on other datasets, each with its own text.

    ``sources``: datasets (for BMAD, the other five datasets' test splits). The selection
    set (the target's test set in the paper protocol) is scored 5 times per epoch.
    """
    config = model.config
    train_sources = [Source(d.name, d, model.text_features(object_name(d.name)), d.has_masks)
                     for d in sources]
    select = None
    if selection_set is not None:
        text = model.text_features(object_name(target_name or selection_set.name))
        selection_set = _cached(model, selection_set)

        def select():
            scores = score_dataset(model, selection_set, text, progress=False)
            return selection_score(compute_metrics(scores))
    return fit(model, train_sources, epochs=epochs or config.epochs, lr=config.zero_shot_lr,
               batch_size=config.batch_size, select=select, selections_per_epoch=5,
               progress=progress, num_workers=num_workers)
