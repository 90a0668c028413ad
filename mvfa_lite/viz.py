"""Pictures: anomaly heat maps laid over their images."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.45,
            cmap: str = "jet") -> Image.Image:
    """Image (3, S, S) in [0, 1] and a map (S, S) in [0, 1] -> RGB picture of the blend.

    The map is not re-normalised per image: a normal image whose map stays low looks calm,
    which is what a reader should see (per-image normalisation makes every image look red).
    """
    rgb = image.permute(1, 2, 0).clamp(0, 1).numpy()                   # (S, S, 3)
    colour = colormaps[cmap](heat.clamp(0, 1).numpy())[..., :3]         # (S, S, 3)
    blend = (1 - alpha) * rgb + alpha * colour
    return Image.fromarray((blend * 255).round().astype(np.uint8))


def side_by_side(image: torch.Tensor, heat: torch.Tensor, mask: torch.Tensor | None = None,
                 alpha: float = 0.45) -> Image.Image:
    """[image | overlay | mask outline] panels in one picture, for reports and notebooks."""
    panels = [Image.fromarray((image.permute(1, 2, 0).clamp(0, 1).numpy() * 255)
                              .astype(np.uint8)), overlay(image, heat, alpha)]
    if mask is not None:
        panels.append(Image.fromarray((mask.numpy() > 0.5).astype(np.uint8) * 255).convert("RGB"))
    width, height = panels[0].size
    canvas = Image.new("RGB", (width * len(panels), height))
    for i, panel in enumerate(panels):
        canvas.paste(panel, (i * width, 0))
    return canvas
