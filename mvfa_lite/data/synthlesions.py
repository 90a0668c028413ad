"""Synthetic lesions planted on real chest X-rays, with exact pixel masks.

The only medical images mvfa-lite may redistribute are the CC BY 4.0 paediatric chest X-rays
(``data/chestxray_kermany224``), and they have image labels only. To teach and test the
segmentation half of MVFA on a fresh clone, this module plants blob-shaped opacities and
lucencies on the 64 normal training X-rays of that set and writes the planted region as the
mask. It is deterministic: ``python -m mvfa_lite.data.synthlesions`` rebuilds the shipped set
``data/chestxray_synthlesion`` pixel for pixel from :data:`SEED` (a test checks that).

The lesions are synthetic: good for checking that maps, masks and pixel metrics work and
for watching training learn *something*; not a clinical benchmark.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

SEED = 2024
NAME = "chestxray_synthlesion"
SOURCE = "chestxray_kermany224"
# (split, class) -> how many images; 64 source X-rays, each used once
SPLITS = {("valid", "good"): 8, ("valid", "Ungood"): 8,
          ("test", "good"): 24, ("test", "Ungood"): 24}


def lesion_mask_and_profile(shape, rng: np.random.Generator):
    """One star-shaped blob inside a lung field -> (mask, profile): mask (H, W) bool, the
    planted region, and profile (H, W) float in [0, 1], how strongly each pixel is changed
    (0 outside the mask, so nothing outside it changes; at least 0.4 inside it, so the edge
    of the lesion is visible)."""
    h, w = shape
    side = rng.choice([0.30, 0.70])                    # left or right lung, as x / width
    cx = w * (side + rng.uniform(-0.10, 0.10))
    cy = h * rng.uniform(0.30, 0.68)
    radius = rng.uniform(0.04, 0.12) * w               # 9 to 27 px on a 224-px image
    harmonics = [(k, rng.uniform(0.0, 0.18), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5)]

    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    dist, angle = np.hypot(x - cx, y - cy), np.arctan2(y - cy, x - cx)
    boundary = radius * (1 + sum(a * np.cos(k * angle + phase) for k, a, phase in harmonics))
    mask = dist < boundary
    depth = np.clip((boundary - dist) / (0.5 * boundary), 0.0, 1.0)  # 0 at the edge, 1 inside
    profile = np.where(mask, 0.4 + 0.6 * depth * depth * (3 - 2 * depth), 0.0)
    return mask, profile


def plant_lesions(image: np.ndarray, rng: np.random.Generator):
    """Plant one lesion (two, one time in four) on a grey image (H, W) uint8 -> (image, mask):
    the changed image (H, W) uint8 and the mask (H, W) uint8 in {0, 255}."""
    grey = image.astype(np.float64)
    mask = np.zeros(image.shape, dtype=bool)
    for _ in range(2 if rng.uniform() < 0.25 else 1):
        region, profile = lesion_mask_and_profile(image.shape, rng)
        texture = gaussian_filter(rng.standard_normal(image.shape), sigma=2.0)
        texture /= texture.std() + 1e-12
        strength = np.clip(profile * (1 + 0.25 * np.clip(texture, -1.5, 1.5)), 0.0, 1.0)
        if rng.uniform() < 0.75:                       # opacity: towards white
            grey = grey + (255 - grey) * rng.uniform(0.35, 0.6) * strength
        else:                                          # lucency: towards black
            grey = grey * (1 - rng.uniform(0.4, 0.6) * strength)
        mask |= region
    changed = np.clip(np.round(grey), 0, 255).astype(np.uint8)
    return changed, np.where(mask, 255, 0).astype(np.uint8)


def build(source: Path, out: Path, seed: int = SEED) -> Path:
    """Write the synthetic-lesion set in the BMAD layout under ``out``.

    ``source`` is the chest X-ray set; its ``train_good/img`` images are used, each once.
    """
    files = sorted((source / "train_good" / "img").glob("*.jpeg"))
    needed = sum(SPLITS.values())
    if len(files) < needed:
        raise FileNotFoundError(f"{source / 'train_good' / 'img'} holds {len(files)} X-rays; "
                                f"{needed} are needed. Use the chestxray_kermany224 set.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))[:needed]
    start = 0
    for (split, label), count in SPLITS.items():
        folder = out / split / label
        (folder / "img").mkdir(parents=True, exist_ok=True)
        for index in order[start:start + count]:
            image = np.asarray(Image.open(files[index]).convert("L"))
            name = files[index].stem + ".png"
            if label == "Ungood":
                image, mask = plant_lesions(image, rng)
                (folder / "anomaly_mask").mkdir(exist_ok=True)
                Image.fromarray(mask).save(folder / "anomaly_mask" / name)
            Image.fromarray(image).save(folder / "img" / name)
        start += count
    return out


def main(argv: list[str] | None = None) -> None:
    from .catalogue import shipped_dir
    parser = argparse.ArgumentParser(description="Rebuild the synthetic-lesion chest X-ray set.")
    parser.add_argument("--source", type=Path, default=shipped_dir() / SOURCE)
    parser.add_argument("--out", type=Path, default=shipped_dir() / NAME)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    print(f"wrote {build(args.source, args.out, args.seed)}")


if __name__ == "__main__":
    main()
