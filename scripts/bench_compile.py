"""torch.compile of the ViT blocks against eager, as ``--compile on`` runs them.

    python scripts/bench_compile.py                        # ViT-L-14-336, 240 px, fp32
    python scripts/bench_compile.py --precision bf16 --blocks 6

One training pass at batch 1 (forward and backward through ``--blocks`` blocks, what a
paper-protocol step does between two adapters), eager and compiled, in one process on random
weights: the first compile's time, then the best of ``--repeats`` interleaved calls of each,
wall and CPU seconds, and how far the outputs differ. Speed does not depend on the weights.
"""
from __future__ import annotations

import argparse
import time

import torch

from mvfa_lite.method.backbone import Backbone, load_backbone
from mvfa_lite.runtime import autocast, machine, resolve_device


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-L-14-336")
    parser.add_argument("--image-size", type=int, default=240)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    backbone = load_backbone(args.model, "random", args.image_size).to(device)
    x = torch.randn(1, 1 + backbone.grid**2, backbone.width, device=device, requires_grad=True)
    eager = Backbone.run_blocks.__get__(backbone)
    compiled = torch.compile(eager)

    def step(run):
        with autocast(device, args.precision):
            out = run(x, 0, args.blocks)
        out.float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    step(compiled)
    first = time.perf_counter() - start
    with torch.no_grad(), autocast(device, args.precision):
        a, b = eager(x, 0, args.blocks).float(), compiled(x, 0, args.blocks).float()
    wall, cpu = {"eager": [], "compiled": []}, {"eager": [], "compiled": []}
    for _ in range(args.repeats):
        for name, run in (("eager", eager), ("compiled", compiled)):
            start, start_cpu = time.perf_counter(), time.process_time()
            step(run)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    best = {name: min(times) for name, times in wall.items()}
    best_cpu = {name: min(times) for name, times in cpu.items()}
    described = machine()
    where = described["gpu"] if device.type == "cuda" else \
        f"{described['cpu']} ({', '.join(described['matrix_units'])})"
    print(f"{args.model} at {args.image_size} px, {args.blocks} blocks, batch 1, forward and "
          f"backward, {args.precision}, RANDOM WEIGHTS; {where}, torch {torch.__version__}")
    print(f"  first compile {first:.0f} s; eager {best['eager']:.3f} s, compiled "
          f"{best['compiled']:.3f} s: {best['eager'] / best['compiled']:.2f}x wall, "
          f"{best_cpu['eager'] / best_cpu['compiled']:.2f}x CPU seconds (of the host); outputs differ by "
          f"{float((a - b).abs().max() / a.abs().max()):.1e} (relative)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
