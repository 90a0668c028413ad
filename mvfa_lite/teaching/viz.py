"""Pictures: anomaly heat maps laid over their images."""
from __future__ import annotations

import torch

from ..data.images import overlay


def overlay_grid(images: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None = None,
                 titles: list[str] | None = None, columns: int = 4, alpha: float = 0.45):
    """A matplotlib figure of heat-map overlays (N images), with mask outlines if given."""
    import matplotlib.pyplot as plt
    n = len(images)
    rows = (n + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        ax.imshow(overlay(images[i], maps[i], alpha))
        if masks is not None and masks[i].any():
            ax.contour(masks[i].numpy(), levels=[0.5], colors="white", linewidths=1.2)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    figure.tight_layout()
    return figure


def weights_notice(identity: dict):
    """A visible banner for notebook outputs saying which weights produced the numbers."""
    from IPython.display import HTML
    name, weights = identity["model_name"], identity["weights"]
    if identity.get("weights_random"):
        return HTML(
            '<div style="border-left:6px solid #d9534f;background:#fdf2f2;padding:8px 12px">'
            f"<b>Random weights</b> ({name}): every number on this page tests the code and "
            "says nothing about MVFA. Run with real CLIP weights (<code>real_weights = True"
            "</code> in the parameters cell, on a GPU) for results.</div>")
    return HTML('<div style="border-left:6px solid #5cb85c;background:#f2fbf2;padding:8px 12px">'
                f"Backbone <b>{name}</b>, weights <code>{weights}</code>.</div>")


RANDOM_TAG = "random weights: not a result"


def random_tag(identity: dict) -> str:
    """The suffix of every figure or table title computed with random weights, else ""."""
    return f" ({RANDOM_TAG})" if identity.get("weights_random") else ""


def captioned(table, title: str, identity: dict, precision: int = 3):
    """A pandas table shown under its own title, which says so when the weights are random."""
    return table.style.set_caption(title + random_tag(identity)).format(precision=precision)
