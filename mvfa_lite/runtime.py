"""Device choice, mixed precision and seeding: the few lines every loop needs."""
from __future__ import annotations

import contextlib
import functools
import os
import random
import time

import numpy as np
import torch

from .config import PRECISIONS


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    return device




def resolve_precision(precision: str, device: torch.device) -> str:
    """The arithmetic a run uses: "auto" becomes bf16 on GPUs that have it, fp16 (with a
    gradient scaler) on those that do not (T4, V100), and on a CPU the faster of bf16 and fp32
    as measured on this machine (:func:`cpu_precision`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return cpu_precision() if device.type == "cpu" else "fp32"


@functools.cache
def cpu_precision() -> str:
    """"bf16" if a ViT-L-sized matrix product runs at least 1.3x faster in bf16 autocast than
    in fp32 on this CPU, else "fp32". Measured once per process (about 0.2 s): CPU flags alone
    mislead (AVX512-BF16 without AMX can be slower than fp32)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 4096)

    def seconds(dtype) -> float:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None), torch.no_grad():
            a @ b                                                  # warm-up
            start = time.perf_counter()
            for _ in range(3):
                a @ b
        return time.perf_counter() - start

    return "bf16" if seconds(torch.bfloat16) * 1.3 < seconds(None) else "fp32"


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    chosen = resolve_precision(precision, device)
    if chosen == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if chosen == "bf16" else torch.float16)


def grad_scaler(device: torch.device, precision: str = "auto") -> torch.amp.GradScaler:
    """A loss scaler for fp16 training (fp16 gradients underflow without it); a pass-through
    for every other precision."""
    enabled = resolve_precision(precision, device) == "fp16"
    return torch.amp.GradScaler(device.type, enabled=enabled)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def loader_workers(device: torch.device) -> int:
    """DataLoader workers: decode images in parallel when a GPU waits for them."""
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def show_progress(progress: bool) -> bool:
    """Progress bars unless the caller or the environment (TQDM_DISABLE=1) turns them off."""
    return progress and not os.environ.get("TQDM_DISABLE")
