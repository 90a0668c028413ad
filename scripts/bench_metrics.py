"""Pixel metrics: mvfa-lite vs scikit-learn and the exact AU-PRO definition.

    python scripts/bench_metrics.py            # speed on 200 maps of 240x240, then the table
    python scripts/bench_metrics.py --device cuda

Speed: pixel AUROC and AP of scikit-learn (``roc_auc_score``, ``average_precision_score`` on
the flattened pixels) against ours on the same float32 maps, same process. Agreement: the
score distributions of tests/metric_cases.py (outliers, heavy tails, ties, a narrow normal
range, a region covering a whole image), ours against scikit-learn and against a slow
one-threshold-at-a-time AU-PRO.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from metric_cases import CASES, blobs, reference_aupro, smooth_maps  # noqa: E402

from mvfa_lite.protocols.metrics import (  # noqa: E402
    aupro,
    pixel_auroc,
    pixel_average_precision,
    pixel_metrics,
)


def timed(function, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls, and the last result."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def speed(maps_count: int, size: int, device: str, repeats: int) -> None:
    masks = blobs(0, n=maps_count, size=size)                          # (N, S, S) bool
    maps = smooth_maps(masks, 0).astype(np.float32)                    # (N, S, S)
    flat_masks, flat_maps = masks.ravel(), maps.ravel()
    ours_masks, ours_maps = torch.from_numpy(masks).to(device), torch.from_numpy(maps).to(device)
    print(f"{maps_count} maps of {size}x{size} ({masks.size / 1e6:.1f} M pixels, "
          f"{masks.mean():.1%} anomalous), float32; ours on {device}, best of {repeats}")
    rows = [
        ("scikit-learn roc_auc_score", 1, lambda: roc_auc_score(flat_masks, flat_maps)),
        ("scikit-learn average_precision_score", 1,
         lambda: average_precision_score(flat_masks, flat_maps)),
        ("ours pixel_auroc", repeats, lambda: pixel_auroc(ours_masks, ours_maps)),
        ("ours pixel_average_precision", repeats,
         lambda: pixel_average_precision(ours_masks, ours_maps)),
        ("ours aupro", repeats, lambda: aupro(ours_masks, ours_maps)),
        ("ours pixel_metrics (all three, one sort)", repeats,
         lambda: pixel_metrics(ours_masks, ours_maps)),
    ]
    seconds, values = {}, {}
    for name, count, function in rows:
        seconds[name], values[name] = timed(function, count)
        print(f"  {name:42s} {seconds[name]:7.3f} s")
    auroc, ap = "roc_auc_score", "average_precision_score"
    sklearn = seconds[f"scikit-learn {auroc}"] + seconds[f"scikit-learn {ap}"]
    ours = seconds["ours pixel_auroc"] + seconds["ours pixel_average_precision"]
    print(f"  AUROC + AP: scikit-learn {sklearn:.2f} s, ours {ours:.2f} s: {sklearn / ours:.1f}x; "
          f"all three pixel metrics in {seconds['ours pixel_metrics (all three, one sort)']:.2f} s")
    print(f"  |ours - scikit-learn|: AUROC "
          f"{abs(values['ours pixel_auroc'] - values[f'scikit-learn {auroc}']):.1e}, AP "
          f"{abs(values['ours pixel_average_precision'] - values[f'scikit-learn {ap}']):.1e}")


def agreement() -> None:
    print("\nagreement (seed 0; AU-PRO reference: every distinct score a threshold, one at a time)")
    print(f"{'case':22s} {'AUROC sklearn':>13s} {'ours':>9s} {'|diff|':>8s} {'AP sklearn':>10s} "
          f"{'ours':>9s} {'|diff|':>8s} {'AUPRO exact':>11s} {'ours':>9s} {'|diff|':>8s}")
    for name, case in CASES.items():
        masks, maps = case(0)
        ours = pixel_metrics(masks, maps)
        auroc = roc_auc_score(masks.ravel(), maps.ravel())
        ap = average_precision_score(masks.ravel(), maps.ravel())
        exact = reference_aupro(masks, maps)
        print(f"{name:22s} {auroc:13.6f} {ours['pixel_auroc']:9.6f} "
              f"{abs(ours['pixel_auroc'] - auroc):8.1e} {ap:10.6f} {ours['pixel_ap']:9.6f} "
              f"{abs(ours['pixel_ap'] - ap):8.1e} {exact:11.6f} {ours['aupro']:9.6f} "
              f"{abs(ours['aupro'] - exact):8.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--maps", type=int, default=200)
    parser.add_argument("--size", type=int, default=240)
    parser.add_argument("--device", default="cpu", help="where our metrics run: cpu, cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-table", action="store_true", help="speed only")
    args = parser.parse_args()
    speed(args.maps, args.size, args.device, args.repeats)
    if not args.no_table:
        agreement()


if __name__ == "__main__":
    main()
