"""``mvfa-lite bench``: how fast each stage runs, on this device, with random weights.

Speed does not depend on the weights' values, so random weights and generated images
measure the real pipeline. Stages (each reported as images/s, FLOPs per image and the
fraction of the device's peak when it is known):

* forward: backbone + adapters, no autograd;
* train_step: one optimiser step of the adapters from cached stems (as training runs);
* fewshot_scoring: forward + zero-shot maps + nearest neighbours in a bank of k x 11 shots;
* end_to_end: the few-shot protocol, ``epochs`` of training on 2k x 11 images + scoring the
  test set (+ metrics), timed whole; ``zero_shot_epoch``: one epoch without stem cache;
* baseline (``--baseline``): a batch-1, per-image loop in the official code's manner (its
  test loop, and its training step with gradients for all of CLIP). It is mvfa-lite imitating
  the official code, not the official code: ``mvfa-lite compare-official`` runs the real one.

The fraction of peak uses the bf16 peak of known GPUs, and on a CPU this machine's
matrix-multiply rate measured in the same run (:func:`gemm_peak`).
"""
from __future__ import annotations

import time

import torch
from torch.utils.data import Dataset

from ..config import MVFAConfig
from ..data.shots import AUGMENTATIONS_PER_SHOT, ShotSet
from ..method.branches import few_shot, zero_shot
from ..method.losses import mvfa_loss
from ..method.model import MVFA
from ..protocols.evaluate import build_memory_bank, compute_metrics, score_dataset
from ..protocols.train import Source, fit
from ..runtime import autocast, cpu_bf16_speedup, machine, resolve_device, resolve_precision
from .flops import FlopCount

PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0, "A100": 312.0, "L4": 121.0, "T4": 65.0}


class GeneratedImages(Dataset):
    """Deterministic random images (and half of them labelled abnormal, with a square mask)."""

    def __init__(self, count: int, size: int):
        self.count, self.size = count, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict:
        generator = torch.Generator().manual_seed(i)
        mask = torch.zeros(self.size, self.size)
        if i % 2:
            mask[self.size // 4: self.size // 2, self.size // 4: self.size // 2] = 1
        return {"image": torch.rand(3, self.size, self.size, generator=generator), "mask": mask,
                "label": i % 2, "path": f"generated/{i:06d}.png"}


def device_peak_tflops(device: torch.device) -> float | None:
    """The bf16 dense peak of known GPUs (None when unknown, e.g. on a CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def gemm_peak(size: int = 2048, repeats: int = 5) -> dict:
    """This CPU's matrix-multiply rate in GFLOP/s (all threads): the best of ``repeats``
    products of two size x size matrices, in fp32 and, where bf16 is native, in bf16."""
    rates = {}
    generator = torch.Generator().manual_seed(0)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and cpu_bf16_speedup() == 0:
            continue
        a = torch.randn(size, size, generator=generator).to(dtype)
        b = torch.randn(size, size, generator=generator).to(dtype)
        seconds = _timed(lambda: a @ b, torch.device("cpu"), 1)
        for _ in range(repeats - 1):
            seconds = min(seconds, _timed(lambda: a @ b, torch.device("cpu"), 1))
        rates[name] = 2 * size ** 3 / seconds / 1e9
    rates["threads"] = torch.get_num_threads()
    return rates


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _flops(fn) -> float:
    with FlopCount() as counter:
        fn()
    return float(counter.total)


def _stage(images_per_call: int, seconds: float, flops: float | None, peak: float | None) -> dict:
    rate = images_per_call / seconds
    row = {"images_per_s": rate, "seconds_per_call": seconds, "batch": images_per_call}
    if flops is not None:
        row["gflops_per_image"] = flops / images_per_call / 1e9
        row["tflops_per_s"] = flops / seconds / 1e12
        if peak:
            row["fraction_of_peak"] = flops / seconds / 1e12 / peak
    return row


def run_benchmark(config: MVFAConfig, *, batch_size: int = 64, train_batch: int = 32,
                  test_images: int = 3715, zero_shot_images: int = 20000, repeats: int = 3,
                  baseline: bool = False, compile: bool = False,
                  progress: bool = True) -> dict:
    device = resolve_device(config.device)
    model = MVFA.from_config(config).to(device).eval()
    if compile:
        model.backbone.compile_blocks()
    peak = device_peak_tflops(device)
    size, k = config.image_size, config.shots
    say = print if progress else (lambda *a, **kw: None)
    described = machine()
    result = {"device": _device_name(device, described), "machine": described,
              "model": config.model_name, "image_size": size, "weights": "random",
              "precision": resolve_precision(config.precision, device),
              "torch": torch.__version__, "compile": compile, "stages": {}}
    if device.type == "cpu":                  # the peak: measured here, in the model's precision
        result["gemm_peak_gflop_per_s"] = gemm_peak()
        rates = result["gemm_peak_gflop_per_s"]
        peak = rates.get(result["precision"], rates["fp32"]) / 1000
    stages = result["stages"]
    images = torch.rand(batch_size, 3, size, size, device=device)
    text = model.text_features("Brain")

    def forward():
        with torch.no_grad(), autocast(device, config.precision):
            model(images)
    say("forward ...", flush=True)
    stages["forward"] = _stage(batch_size, _timed(forward, device, repeats),
                               _flops(forward), peak)

    # one training step from cached stems, as fit() runs it
    batch = torch.rand(train_batch, 3, size, size, device=device)
    masks = (torch.rand(train_batch, size, size, device=device) > 0.9).float()
    labels = torch.arange(train_batch, device=device) % 2
    with autocast(device, config.precision):
        stem = model.stem(batch)
    optimizer = torch.optim.Adam(model.banks.parameters(), lr=config.lr, betas=config.betas)

    def train_step():
        with autocast(device, config.precision):
            features = model(stem=stem)
        loss, _ = mvfa_loss(features, text, masks, labels, True, config.temperature, config.bce_on)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    say("training step ...", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _timed(train_step, device, repeats)
    stages["train_step"] = _stage(train_batch, seconds, _flops(train_step), peak)
    if device.type == "cuda":
        stages["train_step"]["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

    # few-shot scoring against a bank of the k normal shots, augmented
    bank = build_memory_bank(model, torch.rand(k * AUGMENTATIONS_PER_SHOT, 3, size, size),
                             batch_size)

    def score():
        with torch.no_grad():
            with autocast(device, config.precision):
                features = model(images)
            zero_shot(features, text, config.temperature, size)
            few_shot(features, bank, size, config.memory_chunk)
    say("few-shot scoring ...", flush=True)
    stages["fewshot_scoring"] = _stage(batch_size, _timed(score, device, repeats),
                                       _flops(score), peak)
    stages["fewshot_scoring"]["bank_vectors_per_level"] = len(bank)

    say(f"end to end: {config.epochs} epochs on {2 * k * AUGMENTATIONS_PER_SHOT} shots + {test_images} test "
        "images ...", flush=True)
    stages["end_to_end"] = _end_to_end(config, model, test_images, batch_size, device, progress)

    say(f"zero-shot epoch over {zero_shot_images} images ...", flush=True)
    data = GeneratedImages(zero_shot_images, size)
    workers = 4 if device.type == "cuda" else 0
    start = time.perf_counter()
    fit(model, [Source("generated", data, text, True)], epochs=1, lr=config.zero_shot_lr,
        batch_size=train_batch, progress=progress, num_workers=workers)
    _sync(device)
    stages["zero_shot_epoch"] = {"images": zero_shot_images, "seconds": time.perf_counter() - start}

    if baseline:
        say("baseline: batch-1 per-image loop ...", flush=True)
        stages["baseline"] = _baseline(model, text, device, config, repeats,
                                       stages["end_to_end"])
    return result


def _end_to_end(config, model, test_images, batch_size, device, progress) -> dict:
    """The few-shot protocol on generated data: train (stems cached), bank, score, metrics."""
    k, size = config.shots, config.image_size
    generator = torch.Generator().manual_seed(0)
    n = 2 * k * AUGMENTATIONS_PER_SHOT                  # k normal + k abnormal, augmented
    shots = ShotSet(torch.rand(n, 3, size, size, generator=generator),
                    torch.zeros(n, size, size), torch.arange(n) % 2)
    shots.masks[shots.labels == 1, size // 4: size // 2, size // 4: size // 2] = 1
    text = model.text_features("Brain")
    workers = 4 if device.type == "cuda" else 0
    _sync(device)
    start = time.perf_counter()
    fit(model, [Source("generated", shots, text, True)], epochs=config.epochs, lr=config.lr,
        batch_size=config.batch_size, progress=progress)
    _sync(device)
    trained = time.perf_counter()
    bank = build_memory_bank(model, shots.images[shots.labels == 0], batch_size)
    scores = score_dataset(model, GeneratedImages(test_images, size), text, bank, has_masks=True,
                           batch_size=batch_size, num_workers=workers, progress=progress)
    _sync(device)
    scored = time.perf_counter()
    compute_metrics(scores)
    done = time.perf_counter()
    return {"epochs": config.epochs, "train_images": len(shots), "test_images": test_images,
            "train_seconds": trained - start, "score_seconds": scored - trained,
            "metrics_seconds": done - scored, "total_seconds": done - start}


def _baseline(model, text, device, config, repeats, recipe: dict) -> dict:
    """Batch 1 and gradients for every CLIP weight, as the official code runs. Its autocast is
    CUDA-only, so on a CPU it runs fp32. ``recipe_epoch_seconds`` prices one epoch of the
    few-shot recipe measured by end_to_end (train images + bank + test images, one by one)."""
    size = config.image_size
    precision = config.precision if device.type == "cuda" else "fp32"
    image = torch.rand(1, 3, size, size, device=device)
    mask = torch.zeros(1, size, size, device=device)
    label = torch.ones(1, device=device, dtype=torch.long)

    def test_one():
        with torch.no_grad(), autocast(device, precision):
            model(image)
    model.backbone.requires_grad_(True)
    try:
        def train_one():
            with autocast(device, precision):   # no stem cache: gradients reach block 1 too
                x = model.backbone.embed(image, config.normalize_pixels)
                features = model(stem=model.backbone.run_blocks(x, 0, model.levels[0]))
            loss, _ = mvfa_loss(features, text, mask, label, True, config.temperature,
                                config.bce_on)
            loss.backward()
            model.zero_grad(set_to_none=True)
        train_seconds = _timed(train_one, device, repeats)
    finally:
        model.backbone.requires_grad_(False)
    test_seconds = _timed(test_one, device, repeats)
    bank_images = recipe["train_images"] // 2
    epoch = recipe["train_images"] * train_seconds + \
        (bank_images + recipe["test_images"]) * test_seconds
    return {"precision": resolve_precision(precision, device), "test_seconds_per_image": test_seconds,
            "train_seconds_per_step": train_seconds, "recipe_epoch_seconds": epoch}


def _device_name(device: torch.device, described: dict) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {described['cpu']}, {described['threads']} threads"


def format_table(result: dict) -> str:
    """The benchmark as a small text table (the JSON has everything)."""
    lines = [f"{result['model']} at {result['image_size']} px on {result['device']} "
             f"(precision: {result['precision']}, compile: {result['compile']}, random weights)"]
    if "gemm_peak_gflop_per_s" in result:
        peak = result["gemm_peak_gflop_per_s"]
        lines.append("  GEMM peak measured here: " + ", ".join(
            f"{name} {value:.0f} GFLOP/s" for name, value in peak.items() if name != "threads"))
    for name in ("forward", "train_step", "fewshot_scoring"):
        row = result["stages"][name]
        extra = f", {row['fraction_of_peak']:.1%} of peak" if "fraction_of_peak" in row else ""
        memory = f", peak memory {row['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in row else ""
        lines.append(f"  {name:16s} {row['images_per_s']:9.1f} images/s  (batch {row['batch']}, "
                     f"{row['gflops_per_image']:.1f} GFLOP/image, {row['tflops_per_s']:.2f} "
                     f"TFLOP/s{extra}{memory})")
    e2e = result["stages"]["end_to_end"]
    lines.append(f"  end_to_end       {e2e['total_seconds']:9.1f} s  ({e2e['epochs']} epochs on "
                 f"{e2e['train_images']} images: {e2e['train_seconds']:.1f} s; scoring "
                 f"{e2e['test_images']} images: {e2e['score_seconds']:.1f} s; metrics "
                 f"{e2e['metrics_seconds']:.1f} s)")
    zs = result["stages"]["zero_shot_epoch"]
    lines.append(f"  zero_shot_epoch  {zs['seconds']:9.1f} s  ({zs['images']} images)")
    if "baseline" in result["stages"]:
        b = result["stages"]["baseline"]
        per_epoch = e2e["total_seconds"] / e2e["epochs"]
        lines.append(f"  baseline (mvfa-lite imitating the official batch-1 loop, "
                     f"{b['precision']}; compare-official runs the real one): "
                     f"test {b['test_seconds_per_image']:.3f} s/image, train "
                     f"{b['train_seconds_per_step']:.3f} s/step; one epoch of the recipe above "
                     f"{b['recipe_epoch_seconds']:.1f} s vs {per_epoch:.1f} s here "
                     f"({b['recipe_epoch_seconds'] / per_epoch:.1f}x)")
    return "\n".join(lines)
