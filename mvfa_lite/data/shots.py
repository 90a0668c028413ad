"""The few-shot images of the paper: which ones, and their offline augmentation.

* :func:`read_seed_file` reads an official MVFA seed file (which images were the shots);
* :func:`select_shots` draws ``k`` shots per class (from a seed file or at random), and
  :func:`split_off_shots` splits them off a single-split dataset;
* :func:`augment_shots` is the offline 11-fold augmentation of the shots.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError
from .images import PathLike
from .layout import ABNORMAL, NORMAL, ADDataset

#: Each few-shot image becomes this many training images after :func:`augment_shots`.
AUGMENTATIONS_PER_SHOT = 11


# --- few-shot selection ---
_SEED_LINE = re.compile(r"^(?P<kind>[an])-(?P<iterate>\d+)\s*:(?P<names>.*)$")


def read_seed_file(path: PathLike, iterate: int = 0) -> tuple[list[str], list[str]]:
    """Seed file ``path``, draw ``iterate`` -> ``(normal_names, abnormal_names)``: the image
    names of one few-shot draw of an official MVFA seed file.

    The file has lines such as::

        a-0: 01471_60.png 00124_80.png     abnormal shots of draw 0
        n-0: 01368_60.png 00303_99.png     normal shots of draw 0

    ``iterate`` is the number after ``a-`` / ``n-``. A list is empty if the file has no line
    of that kind for ``iterate`` (e.g. normal-only seed files). Raises DataError for an
    unreadable file, a malformed line, or no line at all for ``iterate``.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")     # a byte-order mark is dropped
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read seed file {path}: {exc}. Check the path.") from exc

    draws: dict[tuple[str, int], list[str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        match = _SEED_LINE.match(line)
        if match is None:
            raise DataError(
                f"seed file {path}, line {number}: cannot parse {line!r}. Expected lines like "
                "'a-0: x.png y.png' (abnormal) or 'n-0: x.png y.png' (normal)."
            )
        key = (match["kind"], int(match["iterate"]))
        draws[key] = match["names"].split()
        twice = sorted({n for n in draws[key] if draws[key].count(n) > 1})
        if twice:
            raise DataError(f"seed file {path}, line {number}: {', '.join(twice)} listed more "
                            "than once; each shot is a different image, list each once.")

    if ("n", iterate) not in draws and ("a", iterate) not in draws:
        available = sorted({it for _, it in draws})
        raise DataError(
            f"seed file {path} has no draw {iterate} (no 'a-{iterate}:' or 'n-{iterate}:' line). "
            f"Draws in the file: {', '.join(map(str, available)) or 'none'}. Use one of those."
        )
    return draws.get(("n", iterate), []), draws.get(("a", iterate), [])


def _indices_by_name(
    dataset: ADDataset,
    candidates: list[int],
    names: list[str],
    kind: str,
    k: int,
    seed_file: PathLike,
) -> list[int]:
    """Indices (among ``candidates``) of the images called ``names[:k]``.

    Names match the file name; a stem match is accepted if the extension differs.
    """
    if len(names) < k:
        raise DataError(
            f"seed file {seed_file} lists {len(names)} {kind} image(s) for this draw, but k={k} "
            "were requested. Use a smaller k or the seed file made for this k."
        )
    lookup: dict[str, int] = {}
    for i in candidates:
        path = dataset.items[i].image_path
        lookup.setdefault(path.stem, i)
    for i in candidates:  # exact file names take precedence over stems
        lookup[dataset.items[i].image_path.name] = i

    wanted = names[:k]
    missing = [n for n in wanted if n not in lookup and Path(n).stem not in lookup]
    if missing:
        folder = "good/img" if kind == "normal" else "Ungood/img"
        raise DataError(
            f"seed file {seed_file} names {kind} image(s) that are not in "
            f"{dataset.root / dataset.split / folder}: {', '.join(missing)}. Use the seed file "
            "that belongs to this dataset, or add the images."
        )
    chosen = [lookup[n] if n in lookup else lookup[Path(n).stem] for n in wanted]
    if len(set(chosen)) < len(chosen):
        raise DataError(f"seed file {seed_file} names one {kind} image twice for this draw "
                        f"({', '.join(wanted)}: two names lead to the same file); list each "
                        "shot once.")
    return chosen


def select_shots(
    dataset: ADDataset,
    k: int,
    *,
    seed: int | None = None,
    seed_file: PathLike | None = None,
    iterate: int = 0,
    normal_only: bool = False,
) -> list[int]:
    """Choose the few-shot training images: ``k`` normal and ``k`` abnormal ones.

    The choice comes from an official seed file if ``seed_file`` is given (draw ``iterate``);
    otherwise it is a random draw with ``random.Random(seed)`` per class, deterministic for a
    given ``seed`` (``seed=None`` draws non-reproducibly).

    Returns indices into ``dataset.items``: the normal shots first, then the abnormal ones
    (only the ``k`` normal ones if ``normal_only``); each class in ascending index order.
    Raises DataError when ``k < 1``, a class has too few images, or the seed file names
    images that are not in the dataset.
    """
    normal = [i for i, item in enumerate(dataset.items) if item.label == NORMAL]
    abnormal = [i for i, item in enumerate(dataset.items) if item.label == ABNORMAL]
    where = dataset.root / dataset.split
    counts = f"{where} has {len(normal)} normal and {len(abnormal)} abnormal images"
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"k={k!r} shots is not possible ({counts}). Use a whole number k >= 1.")
    if len(normal) < k or (not normal_only and len(abnormal) < k):
        needed = f"{k} normal" if normal_only else f"{k} normal and {k} abnormal"
        raise DataError(
            f"k={k} shots need {needed} images, but {counts}. Use a smaller k or add images."
        )

    pools = [(normal, "normal")] if normal_only else [(normal, "normal"), (abnormal, "abnormal")]
    if seed_file is not None:
        normal_names, abnormal_names = read_seed_file(seed_file, iterate)
        names = {"normal": normal_names, "abnormal": abnormal_names}
        picks = [
            _indices_by_name(dataset, pool, names[kind], kind, k, seed_file) for pool, kind in pools
        ]
    else:
        rng = random.Random(seed)
        picks = [rng.sample(pool, k) for pool, _ in pools]
    return [i for pick in picks for i in sorted(pick)]


def split_off_shots(
    dataset: ADDataset, k: int, seed: int, normal_only: bool = False
) -> tuple[ADDataset, ADDataset]:
    """Split a single-split dataset into few-shot support images and the rest for testing
    -> ``(support, rest)``, disjoint subsets of ``dataset``; ``support`` holds the shots of
    :func:`select_shots` (seeded draw). Raises DataError as :func:`select_shots` does, or
    when the rest would lack a class for evaluation."""
    shots = select_shots(dataset, k, seed=seed, normal_only=normal_only)
    taken = set(shots)
    rest = dataset.subset([i for i in range(len(dataset)) if i not in taken])
    if rest.num_normal == 0 or rest.num_abnormal == 0:
        raise DataError(
            f"after taking the {k}-shot support images from {dataset.root / dataset.split}, the "
            f"remaining images are {rest.num_normal} normal and {rest.num_abnormal} abnormal; "
            "evaluation needs at least one of each. Use a smaller k or add images."
        )
    return dataset.subset(shots), rest


# --- offline augmentation of the few-shot images ---
def _affine_matrices() -> list[torch.Tensor | None]:
    """The 11 affine maps of :func:`augment_shots` as (2, 3) matrices (``None`` = identity).

    A matrix maps output coordinates to input coordinates in the normalised [-1, 1] grid of
    ``F.affine_grid``.
    """

    def rotation(angle: float) -> torch.Tensor:
        c, s = math.cos(angle), math.sin(angle)
        return torch.tensor([[c, -s, 0.0], [s, c, 0.0]])

    def translation(dx: float, dy: float) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0, dx], [0.0, 1.0, dy]])

    return [
        None,  # the original image, copied unchanged
        rotation(math.pi / 16),
        rotation(-math.pi / 16),
        rotation(math.pi / 8),
        rotation(-math.pi / 8),
        translation(0.1, 0.1),
        translation(0.1, -0.1),
        translation(-0.1, 0.1),
        translation(-0.1, -0.1),
        torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),  # horizontal flip
        torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),  # vertical flip
    ]


def augment_shots(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Enlarge the few-shot set 11-fold with fixed geometric transforms, as MVFA does offline.

    The transforms are: the original; rotations by +pi/16, -pi/16, +pi/8, -pi/8; translations
    by (+-0.1, +-0.1) in normalised coordinates (all four sign pairs); horizontal flip;
    vertical flip. They are applied with ``affine_grid`` + ``grid_sample`` (bilinear,
    reflection padding so no black borders appear). Masks get the same warp and are
    re-binarised at 0.5.

    Images (N, 3, S, S) float, masks (N, S, S) in {0, 1} -> images (11N, 3, S, S) and masks
    (11N, S, S), transform-major: rows ``t*N .. t*N+N-1`` hold all N inputs under transform
    ``t``, so the first N rows are the originals. Labels therefore repeat as
    ``labels.repeat(11)``.
    """
    if images.dim() != 4 or masks.dim() != 3 or images.shape[0] != masks.shape[0]:
        raise ValueError(
            f"augment_shots expects images (N, C, H, W) and masks (N, H, W), got "
            f"{tuple(images.shape)} and {tuple(masks.shape)}"
        )
    n = images.shape[0]
    masks_4d = masks.unsqueeze(1).to(images.dtype)  # (N, 1, H, W)
    out_images, out_masks = [], []
    for theta in _affine_matrices():
        if theta is None:
            out_images.append(images.clone())
            out_masks.append((masks_4d > 0.5).to(images.dtype))
            continue
        theta = theta.to(images).expand(n, 2, 3)  # (N, 2, 3), same map for every image
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (N, H, W, 2)
        warp = dict(mode="bilinear", padding_mode="reflection", align_corners=False)
        out_images.append(F.grid_sample(images, grid, **warp))  # (N, C, H, W)
        warped_masks = F.grid_sample(masks_4d, grid, **warp)  # (N, 1, H, W)
        out_masks.append((warped_masks > 0.5).to(images.dtype))
    return torch.cat(out_images), torch.cat(out_masks).squeeze(1)  # (11N, C, H, W), (11N, H, W)


class ShotSet(Dataset):
    """Training images held in memory: images (N, 3, S, S), masks (N, S, S), labels (N,)."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor):
        self.images, self.masks, self.labels = images, masks, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i], "label": self.labels[i]}


def shot_set(images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
             augment: bool) -> ShotSet:
    """The few-shot training set: the shots, x11 augmented when ``augment``."""
    if augment:
        images, masks = augment_shots(images, masks)
        labels = labels.repeat(AUGMENTATIONS_PER_SHOT)
    return ShotSet(images, masks, labels)


def normal_bank_images(shots: ShotSet) -> torch.Tensor:
    """The images of the normal shots (with their augmentations): the memory bank's source."""
    return shots.images[shots.labels == 0]
