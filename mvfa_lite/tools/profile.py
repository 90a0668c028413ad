"""``mvfa-lite bench --profile``: where the time of one training step and one scoring batch
goes, by kind of operator, at each batch size and precision asked for.

``torch.profiler`` records every aten operator's own time (not counting the operators it
calls). They are grouped by kind (:data:`KINDS`, first match wins); what the wall clock
shows beyond their sum is Python and dispatch overhead (on a GPU: the host's time, the
device's kernels are counted separately). Random weights: speed does not depend on them.
"""
from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

from ..config import MVFAConfig
from ..method.branches import few_shot, zero_shot
from ..method.losses import mvfa_loss
from ..method.model import MVFA
from ..protocols.evaluate import build_memory_bank
from ..runtime import autocast, machine, resolve_device, resolve_precision

# (kind, substrings of the aten operator's name), first match wins
KINDS = (
    ("GEMM", ("mm", "linear", "matmul", "conv", "einsum")),
    ("attention", ("attention", "softmax", "flash")),
    ("casts and copies", ("_to_copy", "copy_", "to", "clone", "contiguous", "cat", "stack")),
    ("norms and elementwise", ("norm", "gelu", "add", "mul", "div", "sub", "exp", "sum",
                               "mean", "sqrt", "pow", "max", "min", "where", "upsample")),
)
OTHER, OVERHEAD = "other operators", "Python and dispatch"


def op_kind(name: str) -> str:
    """The kind of an aten operator ('aten::addmm' -> 'GEMM')."""
    short = name.split("::")[-1]
    return next((kind for kind, parts in KINDS if any(p in short for p in parts)), OTHER)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def breakdown(fn, device: torch.device, repeats: int = 2) -> dict:
    """Seconds per call of ``fn`` (after a warm-up call), split by operator kind."""
    fn()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as recorded:
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        _sync(device)
        wall = (time.perf_counter() - start) / repeats
    kinds = {kind: 0.0 for kind, _ in KINDS} | {OTHER: 0.0}
    device_time = 0.0
    for event in recorded.key_averages():
        if event.key.startswith("aten::"):
            kinds[op_kind(event.key)] += event.self_cpu_time_total / 1e6 / repeats
            device_time += getattr(event, "self_device_time_total", 0) / 1e6 / repeats
    kinds[OVERHEAD] = max(0.0, wall - sum(kinds.values()))
    row = {"seconds": wall, "kinds": kinds}
    if device.type == "cuda":
        row["device_kernel_seconds"] = device_time
    return row


def run_profile(model_name: str = "ViT-L-14-336", image_size: int = 240, device: str = "auto",
                batches=(1, 16), precisions=("fp32", "bf16"), shots: int = 4,
                repeats: int = 2, say=print) -> dict:
    """The breakdown of a training step (from cached stems, as training runs) and of a
    few-shot scoring batch, for every batch size and precision."""
    config = MVFAConfig(model_name=model_name, pretrained="random", image_size=image_size,
                        device=device, shots=shots)
    where = resolve_device(config.device)
    model = MVFA.from_config(config).to(where).eval()
    text = model.text_features("Brain")
    bank = build_memory_bank(model, torch.rand(shots * 11, 3, image_size, image_size), 16)
    optimizer = torch.optim.Adam(model.banks.parameters(), lr=config.lr, betas=config.betas)
    result = {"model": model_name, "image_size": image_size, "device": str(where),
              "machine": machine(), "torch": torch.__version__, "weights": "random",
              "runs": []}
    for precision in precisions:
        used = resolve_precision(precision, where)
        for batch in batches:
            images = torch.rand(batch, 3, image_size, image_size, device=where)
            masks = (torch.rand(batch, image_size, image_size, device=where) > 0.9).float()
            labels = torch.arange(batch, device=where) % 2
            with torch.no_grad(), autocast(where, used):
                stem = model.stem(images)

            def train_step():
                with autocast(where, used):
                    features = model(stem=stem)
                loss, _ = mvfa_loss(features, text, masks, labels, True, config.temperature,
                                    config.bce_on)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            def score():
                with torch.no_grad():
                    with autocast(where, used):
                        features = model(images)
                    zero_shot(features, text, config.temperature, image_size)
                    few_shot(features, bank, image_size, config.memory_chunk)
            for stage, fn in (("train step", train_step), ("scoring", score)):
                say(f"profiling {stage}, batch {batch}, {used} ...", flush=True)
                result["runs"].append({"stage": stage, "batch": batch, "precision": used,
                                       **breakdown(fn, where, repeats)})
    return result


def format_profile(result: dict) -> str:
    """The breakdown as a table: seconds per call, then each kind's share of it."""
    kinds = [kind for kind, _ in KINDS] + [OTHER, OVERHEAD]
    described = result["machine"]
    units = ", ".join(described.get("matrix_units", [])) or "none named"
    lines = [f"profile: {result['model']} at {result['image_size']} px on {result['device']} "
             f"({described.get('cpu', '')}; matrix units: {units}), RANDOM WEIGHTS, "
             f"torch {result['torch']}",
             f"  {'stage':<11}{'batch':>6}{'prec.':>6}{'s/call':>9}" +
             "".join(f"{kind.split()[0][:10]:>11}" for kind in kinds)]
    for run in result["runs"]:
        shares = "".join(f"{run['kinds'][kind] / run['seconds']:>11.0%}" for kind in kinds)
        lines.append(f"  {run['stage']:<11}{run['batch']:>6}{run['precision']:>6}"
                     f"{run['seconds']:>9.3f}{shares}")
    lines.append("  (columns: " + ", ".join(kinds) + "; shares of the wall time per call)")
    return "\n".join(lines)
