"""Text features, the x11 shot augmentation (in the official order) and cosine similarity."""
import math

import torch
import torch.nn.functional as F
from CLIP.tokenizer import tokenize

from mvfa_lite.method.prompts import (  # prompt data only
    ABNORMAL_STATES,
    NORMAL_STATES,
    TEMPLATES,
)


def encode_text_with_prompt_ensemble(model, obj, device):
    columns = []
    for states in (NORMAL_STATES, ABNORMAL_STATES):
        sentences = [t.format(s.format(obj)) for s in states for t in TEMPLATES]
        embeddings = model.encode_text(tokenize(sentences).to(device))
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        mean = embeddings.mean(dim=0)
        columns.append(mean / mean.norm())
    return torch.stack(columns, dim=1)


def cos_sim(a, b, eps=1e-8):
    a = a / a.norm(dim=1, keepdim=True).clamp(min=eps)
    b = b / b.norm(dim=1, keepdim=True).clamp(min=eps)
    return a @ b.T


def _warp(x, matrix):
    theta = torch.tensor(matrix, dtype=torch.float32).unsqueeze(0).repeat(x.shape[0], 1, 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)


def _transforms():
    for angle in (-math.pi / 8, -math.pi / 16, math.pi / 16, math.pi / 8):
        c, s = math.cos(angle), math.sin(angle)
        yield lambda x, c=c, s=s: _warp(x, [[c, -s, 0], [s, c, 0]])
    for dx, dy in ((0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1), (0.1, -0.1)):
        yield lambda x, dx=dx, dy=dy: _warp(x, [[1, 0, dx], [0, 1, dy]])
    yield lambda x: torch.flip(x, dims=[-1])
    yield lambda x: torch.flip(x, dims=[-2])


def augment(fewshot_img, fewshot_mask=None):
    images = [fewshot_img] + [t(fewshot_img) for t in _transforms()]
    if fewshot_mask is None:
        images = torch.cat(images)
        return images, torch.zeros(images.shape[0], 1, *images.shape[2:])
    masks = [fewshot_mask] + [t(fewshot_mask) for t in _transforms()]
    return torch.cat(images), torch.cat(masks)
