"""MVFA = a frozen CLIP ViT + residual adapter banks -> adapted patch features per level.

    images (B, 3, S, S) in [0, 1]
      -> stem: patch embedding and the blocks up to the first tapped level (no trained
         weight is involved, so it runs without autograd and can be cached)
      -> for each tapped level: adapters (seg, det) -> features (B, T, D); the mixed stream
         continues through the next blocks
    T = 1 + grid**2 tokens (CLS first), D = the joint text-image width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import MVFAConfig
from .adapters import AdapterBanks
from .backbone import Backbone, default_levels, load_backbone
from .prompts import PROMPT_SETS, state_sentences


@dataclass
class Features:
    """Adapted features of one batch, one entry per tapped level, each (B, T, D)."""
    seg: list[torch.Tensor]
    det: list[torch.Tensor]


class MVFA(nn.Module):
    def __init__(self, backbone: Backbone, config: MVFAConfig):
        super().__init__()
        levels = config.levels or default_levels(backbone.layers)
        if list(levels) != sorted(set(levels)) or not 1 <= levels[0] <= levels[-1] <= backbone.layers:
            raise ValueError(f"levels must be increasing block numbers in 1..{backbone.layers}, "
                             f"got {levels}")
        self.config = config
        self.levels = tuple(levels)
        self.backbone = backbone
        with torch.random.fork_rng():        # the same initial adapters for the same seed,
            torch.manual_seed(config.seed)   # without touching the caller's random stream
            self.banks = AdapterBanks(backbone.width, backbone.embed_dim, len(levels), config.mix)
        self._text_cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, config: MVFAConfig, clip_checkpoint=None) -> "MVFA":
        backbone = load_backbone(config.model_name, config.pretrained, config.image_size,
                                 config.quick_gelu, checkpoint=clip_checkpoint)
        return cls(backbone, config)

    @property
    def device(self) -> torch.device:
        return self.backbone.pixel_mean.device

    @property
    def identity(self) -> dict:
        """What the features depend on besides the adapters: checkpoints must match it."""
        b = self.backbone
        return dict(b.identity, width=b.width, layers=b.layers, embed_dim=b.embed_dim,
                    grid=b.grid, levels=list(self.levels))

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> tokens (B, T, W) after block ``levels[0]``; no autograd needed."""
        with torch.no_grad():
            x = self.backbone.embed(images.to(self.device), self.config.normalize_pixels)
            return self.backbone.run_blocks(x, 0, self.levels[0])

    def forward(self, images: torch.Tensor | None = None, *,
                stem: torch.Tensor | None = None) -> Features:
        """Adapted features from images, or from a precomputed :meth:`stem`."""
        x = self.stem(images) if stem is None else stem
        seg, det = [], []
        for level, block_end in enumerate(self.levels):
            if level > 0:
                x = self.backbone.run_blocks(x, self.levels[level - 1], block_end)
            x, h_seg, h_det = self.banks(level, x)
            seg.append(h_seg)
            det.append(h_det)
        return Features(seg, det)

    def text_features(self, obj: str, prompt_set: tuple | None = None) -> torch.Tensor:
        """The prompt ensemble for one object word: T (D, 2), columns normal, abnormal.

        ``prompt_set`` = (normal states, abnormal states, templates); by default the set the
        config names. The text tower is frozen, so each result is computed once and cached.
        """
        if prompt_set is None:
            if self.config.prompts not in PROMPT_SETS:
                raise ValueError(f"unknown prompt set {self.config.prompts!r}; choose from "
                                 f"{sorted(PROMPT_SETS)}")
            prompt_set = PROMPT_SETS[self.config.prompts]
        normal_states, abnormal_states, templates = prompt_set
        key = (obj, tuple(normal_states), tuple(abnormal_states), tuple(templates), self.device)
        if key not in self._text_cache:
            columns = []
            for states in (normal_states, abnormal_states):
                sentences = self.backbone.encode_text(state_sentences(obj, states, templates))
                columns.append(nn.functional.normalize(sentences.mean(0), dim=0))
            self._text_cache[key] = torch.stack(columns, dim=1)     # (D, 2)
        return self._text_cache[key]

    def clear_text_cache(self) -> None:
        """Forget the cached text features: the next :meth:`text_features` computes them."""
        self._text_cache.clear()

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.banks.parameters())
