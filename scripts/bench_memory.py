"""Peak memory of checking, scoring and the metrics over one split, against its size.

    python scripts/bench_memory.py                       # 100, 1,000 and 5,000 images
    python scripts/bench_memory.py --counts 100 1000 --image-size 112

Each count runs in a fresh process on a synthetic split (grey 64x64 PNGs, half with a
lesion and its mask) with the tiny random model and a one-shot memory bank: the split is
checked (:meth:`ADDataset.check`), scored (:func:`score_dataset`) and measured
(:func:`compute_metrics`). Printed: each phase's own peak resident memory (RSS; Linux: the
peak is reset between phases through /proc/self/clear_refs), the largest of them ("whole
run"), and the growth per image between the smallest and the
largest count. Streaming would keep the figures flat (target: within 10 %).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
import numpy as np
from PIL import Image

count, size, root = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
rng = np.random.default_rng(0)
for i in range(count):
    kind = "Ungood" if i % 2 else "good"
    pixels = rng.integers(0, 120, (64, 64), dtype=np.uint8)
    if kind == "Ungood":
        pixels[16:40, 16:40] = 250
        mask = np.zeros((64, 64), np.uint8)
        mask[16:40, 16:40] = 255
        (root / "test" / kind / "anomaly_mask").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / "test" / kind / "anomaly_mask" / f"{i:05d}.png")
    (root / "test" / kind / "img").mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(root / "test" / kind / "img" / f"{i:05d}.png")

import torch
from mvfa_lite.config import preset
from mvfa_lite.data.layout import ADDataset
from mvfa_lite.method.model import MVFA
from mvfa_lite.protocols.evaluate import build_memory_bank, compute_metrics, score_dataset

def peak_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass

torch.set_num_threads(2)
config = preset("fast-cpu", image_size=size, device="cpu")
model = MVFA.from_config(config).eval()
text = model.text_features("chest")
phases, seconds = {}, {}
reset_peak(); phases["start"] = peak_mb()
start = time.perf_counter()
dataset = ADDataset(root, "test", size).check(progress=False)
phases["check"], seconds["check"] = peak_mb(), time.perf_counter() - start
normal = torch.stack([dataset[0]["image"]])
bank = build_memory_bank(model, normal)
reset_peak(); start = time.perf_counter()
scores = score_dataset(model, dataset, text, bank, progress=False, num_workers=0)
phases["score"], seconds["score"] = peak_mb(), time.perf_counter() - start
reset_peak(); start = time.perf_counter()
metrics = compute_metrics(scores, device="cpu")
phases["metrics"], seconds["metrics"] = peak_mb(), time.perf_counter() - start
phases["whole run"] = max(phases.values())
print(json.dumps({"count": count, "peak_mb": phases, "seconds": seconds,
                  "pixel_auroc": metrics.get("pixel_auroc")}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--image-size", type=int, default=112)
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TQDM_DISABLE": "1"}
    rows = []
    for count in args.counts:
        with tempfile.TemporaryDirectory(prefix="mvfa-bench-memory-") as root:
            done = subprocess.run([sys.executable, "-c", CHILD, str(count),
                                   str(args.image_size), root], capture_output=True, text=True,
                                  env=env)
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    phases = list(rows[0]["peak_mb"])
    print(f"peak RSS (MB), tiny model, {args.image_size} px, each phase's own peak")
    print(f"{'images':>7} " + " ".join(f"{p:>10}" for p in phases) + "   seconds (check/score/metrics)")
    for row in rows:
        times = "/".join(f"{row['seconds'][p]:.1f}" for p in ("check", "score", "metrics"))
        print(f"{row['count']:>7} " + " ".join(f"{row['peak_mb'][p]:>10.0f}" for p in phases)
              + f"   {times}")
    first, last = rows[0], rows[-1]
    growth = last["peak_mb"]["whole run"] / first["peak_mb"]["whole run"] - 1
    per_image = (last["peak_mb"]["whole run"] - first["peak_mb"]["whole run"]) * 1024 / max(
        1, last["count"] - first["count"])
    print(f"whole run: {growth:+.0%} from {first['count']} to {last['count']} images "
          f"({per_image:.0f} KB per image); target: flat within 10 %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
