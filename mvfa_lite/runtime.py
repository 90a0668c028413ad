"""Device choice, mixed precision and seeding: the few lines every loop needs."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .config import COMPILE_MODES, DEVICE_NAMES, PRECISIONS
from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; any other name must be a device this machine
    has (ConfigError naming --device otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device = {name!r} (--device) is not possible: it must be "
                          f"{DEVICE_NAMES}.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(f"device = {name!r} (--device): torch sees no CUDA GPU on this "
                              "machine; use --device cpu (or auto).")
        if (device.index or 0) >= count:
            raise ConfigError(f"device = {name!r} (--device) is not possible: it must be one "
                              f"of cuda:0 .. cuda:{count - 1}.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device = {name!r} (--device): torch sees no Apple GPU on this "
                          "machine; use --device cpu (or auto).")
    return device


@functools.cache
def cpu_bf16_speedup() -> float:
    """How much faster bf16 autocast runs a ViT-sized MLP block than fp32 on this CPU,
    measured once per process (~0.5 s). CPU flags alone mislead: bf16 is 2-4x faster where
    matrix units exist (AMX, AVX512-BF16 on some chips), emulated and slower elsewhere."""
    if not (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()):
        return 0.0                                      # no native bf16: emulated, never faster
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(290, 1024, generator=generator)           # one ViT-L image
    up = torch.randn(1024, 4096, generator=generator)
    down = torch.randn(4096, 1024, generator=generator)

    def block():
        return torch.nn.functional.gelu(tokens @ up) @ down

    def seconds(bf16: bool) -> float:
        context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with context, torch.no_grad():
            block()
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                block()
                best = min(best, time.perf_counter() - start)
        return best
    return seconds(False) / seconds(True)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The arithmetic a run uses: "auto" becomes bf16 on GPUs that have it, fp16 (with a
    gradient scaler) on those that do not (T4, V100), and on a CPU the faster of bf16 and fp32
    as measured on this machine (:func:`cpu_precision`)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision = {precision!r} (--precision) is not possible: it must "
                          f"be one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return cpu_precision() if device.type == "cpu" else "fp32"


def cpu_precision() -> str:
    """"bf16" where it measured at least 1.25x faster than fp32 on this CPU
    (:func:`cpu_bf16_speedup`), else "fp32"."""
    return "bf16" if cpu_bf16_speedup() >= 1.25 else "fp32"


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    chosen = resolve_precision(precision, device)
    if chosen == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if chosen == "bf16" else torch.float16)


#: "auto" compiles where the blocks measured at least this much faster compiled
COMPILE_GAIN = 1.1


def cache_folder() -> Path:
    """Where mvfa-lite keeps what it works out once: ``$MVFA_CACHE``, else ~/.cache/mvfa-lite."""
    return Path(os.environ.get("MVFA_CACHE", Path.home() / ".cache" / "mvfa-lite"))


def resolve_compile(mode: str, facts: dict, measure) -> bool:
    """Whether to torch.compile the ViT blocks: "on" and "off" as said; "auto" compiles where
    ``measure()`` (-> seconds eager, seconds compiled, of one training pass through some
    blocks) found it :data:`COMPILE_GAIN` faster. The measurement costs a compile (seconds on
    a GPU, minutes on a CPU), so it is made once per ``facts`` (the machine, torch, the model
    and precision) and kept in :func:`cache_folder`/compile.json."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile = {mode!r} (--compile) is not possible: it must be one of "
                          f"{', '.join(COMPILE_MODES)}.")
    if mode != "auto":
        return mode == "on"
    facts = dict(facts, torch=torch.__version__, machine=machine()["cpu"],
                 gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    key = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_folder() / "compile.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        eager, compiled = measure()
        known[key] = dict(facts, eager_s=eager, compiled_s=compiled, speedup=eager / compiled)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as handle:
            json.dump(known, handle, indent=1)
        os.replace(handle.name, path)
    return known[key]["speedup"] >= COMPILE_GAIN


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


def cpu_matrix_units() -> list[str]:
    """The vector and matrix units of this CPU that torch's kernels use (as ``lscpu`` names
    them: avx2, avx512f, avx512_vnni, avx512_bf16, amx_tile, amx_fp16, amx_bf16); bf16 runs natively
    only with avx512_bf16 or amx (:func:`cpu_bf16_speedup`)."""
    checks = (("avx2", "_is_avx2_supported"), ("avx512f", "_is_avx512_supported"),
              ("avx512_vnni", "_is_vnni_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"),
              ("amx_tile", "_is_amx_tile_supported"), ("amx_fp16", "_is_amx_fp16_supported"))
    found = [name for name, check in checks if getattr(torch.cpu, check, lambda: False)()]
    try:                                # amx_bf16, which torch has no check for: lscpu's flag
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo
                          if line.startswith("flags")), [])
    except OSError:
        flags = []
    return found + ["amx_bf16"] * ("amx_bf16" in flags)


def machine() -> dict:
    """What a benchmark ran on: the CPU (model name, cores, the threads torch uses, its matrix
    units, bf16's measured speedup), the GPU torch sees (None without one), torch and Python."""
    import platform
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "matrix_units": cpu_matrix_units(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "bf16_speedup_measured": cpu_bf16_speedup()}
