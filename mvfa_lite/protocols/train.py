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

from ..data.shots import ShotSet, shot_set
from ..method.losses import mvfa_loss
from ..method.model import MVFA
from ..method.prompts import object_name
from ..runtime import autocast, grad_scaler, seed_everything, show_progress
from . import training_state
from .evaluate import Scores, StemSet, build_memory_bank, compute_metrics, score_dataset


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
    step_losses: list[float] = field(default_factory=list)  # the loss of every batch
    best_epoch: int | None = None                        # None: no selection, last epoch kept
    best_step: int | None = None                         # optimiser steps before the selection
    best_score: float | None = None
    best_scores: Scores | None = None                    # the selection set's, when kept


def selection_score(scores: Scores) -> float:
    """The official model-selection score: image AUROC (+ pixel AUROC when masks exist).
    AUPRO is left out: the selection does not use it, and it costs more than the rest."""
    metrics = compute_metrics(scores, regions=False)
    return metrics["image_auroc"] + metrics.get("pixel_auroc", 0.0)


# When ``select`` runs, as the official scripts do (train_few.py and train_zero.py, main):
#   "epoch":  after every epoch; a later epoch must score higher (train_few.py: >)
#   "fifths": before batches 0, n//5, 2n//5, ... of every epoch (n batches per epoch), so the
#             untrained adapters compete and the last batches of the run never do; a later
#             selection wins ties (train_zero.py: >=)
SCHEDULES = ("epoch", "fifths")


class Selection:
    """The official model selection: when ``select`` runs (``schedule``, above) and which
    adapters are kept. ``select`` returns ``(score, scores)``, higher is better."""

    def __init__(self, select, schedule: str, n_batches: int, model: MVFA, result: TrainResult):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.select, self.schedule, self.model, self.result = select, schedule, model, result
        self.before = {j for j in range(n_batches) if j % max(1, n_batches // 5) == 0} \
            if schedule == "fifths" else set()
        self.best_state = None
        self.rescore = False          # True after a resume: the kept adapters' scores are lost

    def before_batch(self, batch: int, epoch: int, steps: int) -> None:
        if batch in self.before:
            self._offer(epoch, steps)

    def after_epoch(self, epoch: int, steps: int) -> None:
        if self.schedule == "epoch":
            self._offer(epoch, steps)

    def _offer(self, epoch: int, steps: int) -> None:
        score, scores = self.select()
        self.model.banks.train()
        best, result = self.result.best_score, self.result
        if best is None or score > best or (self.schedule == "fifths" and score == best):
            result.best_score, result.best_epoch, result.best_step = score, epoch + 1, steps
            result.best_scores = scores
            self.best_state = copy.deepcopy(self.model.banks.state_dict())
            self.rescore = False

    def keep_best(self) -> None:
        """Load the kept adapters (the last ones stay when nothing was selected); kept before
        a resume, their scores are made again (the same numbers: the same adapters)."""
        if self.best_state is not None:
            self.model.banks.load_state_dict(self.best_state)
            if self.rescore:
                self.result.best_scores = self.select()[1]
                self.model.banks.eval()


def fit(model: MVFA, sources: list[Source], *, epochs: int, lr: float, batch_size: int,
        select=None, schedule: str = "epoch", progress: bool = True, num_workers: int = 0,
        cache_stems: bool = True, shuffle: bool = True, stems=None,
        state_file=None) -> TrainResult:
    """Train the adapter banks on ``sources``.

    ``select``: optional callable returning ``(score, scores)`` (higher score is better); it
    runs on the official ``schedule`` (:class:`Selection`) and the best adapters are kept.
    ``shuffle=False`` visits the images in their order (e.g. an order taken from elsewhere).
    ``stems``: the sources' stems when already computed (one entry per source, or None).
    ``state_file``: where the training state is kept at every epoch boundary, and resumed
    from when it was written for the same settings and data (:mod:`.training_state`).
    """
    config, device = model.config, model.device
    result, steps = TrainResult(), 0
    n_batches = sum(math.ceil(len(s.data) / batch_size) for s in sources)
    selection = Selection(select, schedule, n_batches, model, result) if select else None
    generator = seed_everything(config.seed)
    optimizers = {bank: torch.optim.Adam(getattr(model.banks, bank).parameters(), lr=lr,
                                         betas=config.betas) for bank in ("seg", "det")}
    scaler = grad_scaler(device, config.precision)   # loss scaling for fp16, else a no-op
    stems = [given if given is not None else compute_stems(model, s.data)
             if cache_stems and isinstance(s.data, ShotSet) else None
             for s, given in zip(sources, stems or [None] * len(sources))]
    key = state_file and training_state.identity(
        config, sources, epochs=epochs, lr=lr, batch_size=batch_size,
        schedule=select and schedule, shuffle=shuffle)
    saved = training_state.load(state_file, key)
    if saved:
        steps = _restore(saved, model, optimizers, scaler, generator, result, selection)
        print(f"resuming after epoch {saved['epoch']} of {epochs} (state in {state_file})")
    start = saved["epoch"] if saved else 0
    bar = tqdm(total=epochs * n_batches, initial=start * n_batches, desc="training",
               unit="batch", disable=not show_progress(progress))
    model.banks.train()
    for epoch in range(start, epochs):
        totals, seen, losses = {}, 0, []
        for step, (k, batch) in enumerate(_batches(sources, stems, batch_size, generator,
                                                   num_workers, shuffle)):
            if selection:
                selection.before_batch(step, epoch, steps)
            loss, parts = _train_step(model, sources[k], batch, optimizers, scaler)
            steps += 1
            losses.append(loss)
            for name, value in {"loss": loss, **parts}.items():
                totals[name] = totals.get(name, 0) + value * len(batch["label"])
            seen += len(batch["label"])
            bar.update()
        if selection:
            selection.after_epoch(epoch, steps)
        result.step_losses += torch.stack(losses).float().tolist()
        result.history.append({"epoch": epoch + 1,
                               **{name: float(total) / seen for name, total in totals.items()}})
        bar.set_postfix(loss=f"{result.history[-1]['loss']:.4f}")
        if state_file is not None:
            training_state.save(
                state_file, key, epoch=epoch + 1, steps=steps, banks=model.banks.state_dict(),
                optimizers={k: o.state_dict() for k, o in optimizers.items()},
                scaler=scaler.state_dict(), generator=generator.get_state(),
                torch_rng=torch.get_rng_state(), history=result.history,
                step_losses=result.step_losses, best=[result.best_epoch, result.best_step,
                                                      result.best_score],
                best_state=selection.best_state if selection else None)
    bar.close()
    model.banks.eval()
    if selection:
        selection.keep_best()
    return result


def _restore(saved: dict, model, optimizers, scaler, generator, result, selection) -> int:
    """Put a saved training state back (see fit); returns the optimiser steps taken."""
    model.banks.load_state_dict(saved["banks"])
    for bank, optimizer in optimizers.items():
        optimizer.load_state_dict(saved["optimizers"][bank])
    if saved["scaler"]:                 # empty when no loss scaling runs
        scaler.load_state_dict(saved["scaler"])
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    result.history, result.step_losses = saved["history"], saved["step_losses"]
    result.best_epoch, result.best_step, result.best_score = saved["best"]
    if selection:
        selection.best_state = saved["best_state"]
        selection.rescore = saved["best_state"] is not None
    return saved["steps"]


def _train_step(model: MVFA, source: Source, batch: dict, optimizers: dict, scaler):
    """One optimiser step on one batch -> (loss, its parts), detached. Sources without masks
    train the classification bank only (the seg optimiser does not step)."""
    config, device = model.config, model.device
    masks = batch["mask"].to(device, non_blocking=True).float()
    labels = batch["label"].to(device, non_blocking=True)
    with autocast(device, config.precision):
        features = model(stem=batch["stem"].to(device)) if "stem" in batch \
            else model(batch["image"].to(device, non_blocking=True))
    loss, parts = mvfa_loss(features, source.text, masks, labels, source.has_masks,
                            config.temperature, config.bce_on)
    for optimizer in optimizers.values():
        optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizers["det"])
    if source.has_masks:
        scaler.step(optimizers["seg"])
    scaler.update()
    return loss.detach(), parts


def compute_stems(model: MVFA, data: ShotSet, chunk: int = 32) -> torch.Tensor:
    """Stem tokens (N, T, W) of every image, computed once (no trained weight involved)."""
    with autocast(model.device, model.config.precision):
        return torch.cat([model.stem(images.to(model.device))
                          for images in data.images.split(chunk)])


def _batches(sources, stems, batch_size, generator, num_workers, shuffle=True):
    """Yield (source index, batch dict) for one epoch: each source shuffled and cut into
    batches, the batches of all sources visited in one shuffled order (``shuffle=False``:
    the sources one after the other, each in its own order)."""
    plan = []
    for k, source in enumerate(sources):
        order = torch.randperm(len(source.data), generator=generator) if shuffle \
            else torch.arange(len(source.data))
        plan += [(k, chunk) for chunk in order.split(batch_size)]
    if shuffle:
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
def train_few_shot(model: MVFA, support, *, selection_set=None, progress: bool = True,
                   epochs: int | None = None, state_file=None) -> tuple[TrainResult, ShotSet]:
    """Few-shot protocol: adapt on k normal (+ k abnormal) shots of one dataset.

    ``selection_set``: evaluated after every epoch (with a memory bank rebuilt from the
    normal shots) to keep the best epoch; the paper protocol passes the test set here, and
    ``result.best_scores`` then holds the test scores of the kept adapters.
    Returns the training result and the shot set (whose normal images make the bank).
    ``state_file``: see :func:`fit` (both protocols).
    """
    config = model.config
    loaded = support.load_all(progress=False)
    shots = shot_set(loaded["image"], loaded["mask"], loaded["label"], config.augment)
    text = model.text_features(object_name(support.name))
    stems = compute_stems(model, shots)     # for training, and for the bank of every selection
    select = None
    if selection_set is not None:
        selection_set = _cached(model, selection_set)

        def select():
            bank = build_memory_bank(model, stems=stems[shots.labels == 0])
            scores = score_dataset(model, selection_set, text, bank, progress=False)
            return selection_score(scores), scores
    source = Source(support.name, shots, text, support.has_masks)
    result = fit(model, [source], epochs=epochs or config.epochs, lr=config.lr,
                 batch_size=config.batch_size, select=select, progress=progress, stems=[stems],
                 state_file=state_file)
    return result, shots


def train_zero_shot(model: MVFA, sources: list, *, target_name: str | None = None,
                    selection_set=None, progress: bool = True, epochs: int | None = None,
                    num_workers: int = 0, state_file=None) -> TrainResult:
    """Leave-one-dataset-out protocol: adapt on other datasets, each with its own text.

    ``sources``: datasets (for BMAD, the other five datasets' test splits). The selection
    set (the target's test set in the paper protocol) is scored 5 times per epoch, on the
    official schedule ("fifths" above).
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
            return selection_score(scores), scores
    return fit(model, train_sources, epochs=epochs or config.epochs, lr=config.zero_shot_lr,
               batch_size=config.batch_size, select=select, schedule="fifths",
               progress=progress, num_workers=num_workers, state_file=state_file)
