"""Residual adapters: the only weights MVFA trains.

After each tapped block l the token stream x (B, T, W) passes through two adapters, one of
the segmentation bank and one of the classification ("det") bank. An adapter is a
bottleneck of two bias-free linear layers with LeakyReLU:

    h = LeakyReLU(x @ W1)   (B, T, D)   D = the joint text-image width: h is compared with text
    y = LeakyReLU(h @ W2)   (B, T, W)   back to the stream's width

and the stream continues as a residual mix (0.8 / 0.1 / 0.1 by default):

    x <- mix[0] * x + mix[1] * y_seg + mix[2] * y_det

so every later level sees the earlier adaptations ("stepwise enhancement"). After the last
tapped level the stream reaches only the pooled output, which MVFA discards, so the last
level needs only W1 (here called the projector). The official code builds the same
``ClipAdapter`` (fc1, fc2) at every level, the last included (CLIP/adapter.py,
``CLIP_Inplanted``); the last level's fc2 never gets a gradient. (Whether the paper itself
names this last layer a projector was not checked against its text.)
``mix=(1, 0, 0)`` leaves the stream untouched: the adapters become independent per-level
projectors (the levels-and-mix ablation of notebook 11).
"""
from __future__ import annotations

import torch
from torch import nn


class Adapter(nn.Module):
    """Bottleneck adapter W -> D (-> W). ``residual=False`` builds the last level's (no W2)."""

    def __init__(self, width: int, bottleneck: int, residual: bool = True):
        super().__init__()
        self.down = nn.Sequential(nn.Linear(width, bottleneck, bias=False), nn.LeakyReLU())
        self.up = nn.Sequential(nn.Linear(bottleneck, width, bias=False), nn.LeakyReLU()) \
            if residual else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.down(x)                                   # (B, T, D)
        return h, (self.up(h) if self.up is not None else None)   # (B, T, W) or None


class AdapterBanks(nn.Module):
    """The segmentation and classification banks: one adapter of each per tapped level."""

    def __init__(self, width: int, bottleneck: int, n_levels: int,
                 mix: tuple[float, float, float] = (0.8, 0.1, 0.1)):
        super().__init__()
        def bank():
            return nn.ModuleList(Adapter(width, bottleneck, residual=level < n_levels - 1)
                                 for level in range(n_levels))
        self.seg, self.det = bank(), bank()
        self.mix = tuple(mix)

    def forward(self, level: int, x: torch.Tensor):
        """Adapt the stream after tapped level ``level``.

        Returns the new stream (B, T, W) and the seg and det features (B, T, D).
        """
        h_seg, y_seg = self.seg[level](x)
        h_det, y_det = self.det[level](x)
        if y_seg is not None:                       # not the last level: mix into the stream
            keep, w_seg, w_det = self.mix
            x = keep * x + w_seg * y_seg + w_det * y_det
        return x, h_seg, h_det
