"""Loading medical anomaly-detection datasets in the MVFA / BMAD layout.

Every dataset split is a folder of this shape::

    <root>/<split>/good/img/*              normal images
    <root>/<split>/Ungood/img/*            abnormal images
    <root>/<split>/Ungood/anomaly_mask/*   binary masks, same file name as the image
                                           (only for datasets with pixel labels)

BMAD ships the splits ``valid`` and ``test``; the small embedded sets of this project have a
single split called ``embedded``.

This module provides

* robust image / mask readers (:func:`load_image`, :func:`load_mask`) that turn any PIL mode,
  including 16-bit and float images, into 8-bit RGB,
* the tensor conversions used everywhere else (:func:`image_to_tensor`, :func:`mask_to_tensor`),
* :class:`ADDataset`, one split of one dataset, and :class:`ImageFolder` for unlabelled images,
* the few-shot machinery of the paper: reading the official seed files, drawing ``k`` shots per
  class (:func:`select_shots`, :func:`split_off_shots`) and the offline 11-fold augmentation of
  the shots (:func:`augment_shots`).

Labels are ``0`` for normal and ``1`` for abnormal images. Every problem with the input data
raises :class:`~mvfa_lite.errors.DataError` with a message that names the file or folder at
fault and says how to fix it.
"""

from __future__ import annotations

import copy
import math
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from .errors import DataError
from .runtime import show_progress

__all__ = [
    "ABNORMAL",
    "AUGMENTATIONS_PER_SHOT",
    "ADDataset",
    "BMAD_KEYS",
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "Item",
    "NORMAL",
    "augment_shots",
    "bmad_root",
    "image_to_tensor",
    "load_image",
    "load_mask",
    "mask_to_tensor",
    "read_seed_file",
    "select_shots",
    "split_off_shots",
]

PathLike = str | os.PathLike

NORMAL = 0
ABNORMAL = 1

#: File name endings (lower case) that are read as images; everything else is ignored.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: The six BMAD datasets, stored as ``<data_root>/<Key>_AD``.
BMAD_KEYS = ("Brain", "Liver", "Retina_RESC", "Retina_OCT2017", "Chest", "Histopathology")

#: Each few-shot image becomes this many training images after :func:`augment_shots`.
AUGMENTATIONS_PER_SHOT = 11

LAYOUT = (
    "<root>/<split>/good/img/*              normal images\n"
    "<root>/<split>/Ungood/img/*            abnormal images\n"
    "<root>/<split>/Ungood/anomaly_mask/*   binary masks (optional), same file names as Ungood/img"
)

# PIL modes with more than 8 bits per pixel. PIL's own convert("RGB") clips them to 0..255,
# which makes a typical 16-bit scan almost entirely white, so we rescale them ourselves.
_HIGH_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
# Modes with an alpha channel; the alpha is removed by compositing onto black.
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


# --------------------------------------------------------------------------------------------
# Reading images and masks
# --------------------------------------------------------------------------------------------


def _is_image_file(path: Path) -> bool:
    """True for visible regular files with an accepted image extension."""
    return (
        path.is_file()
        and not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def _open_fully(path: PathLike) -> Image.Image:
    """Open and completely decode an image, turning every failure into a DataError.

    ``Image.open`` only reads the header; a truncated or corrupt file fails later, on first
    pixel access. Calling ``load()`` here makes those failures happen inside the ``try``.
    """
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        reason = str(exc) or type(exc).__name__
        raise DataError(f"cannot read image {path}: {reason}. Replace or delete the file.") from exc
    return img


def _rescale_to_8bit(img: Image.Image) -> Image.Image:
    """Map a 16/32-bit integer or float image to 8-bit grey with its own min-max range.

    The darkest pixel becomes 0 and the brightest 255; a constant image becomes all zeros.
    Non-finite float values (NaN, inf) are treated as the minimum.
    """
    values = np.asarray(img, dtype=np.float64)  # (H, W)
    finite = np.isfinite(values)
    out = np.zeros(values.shape, dtype=np.uint8)
    if finite.any():
        low, high = values[finite].min(), values[finite].max()
        if high > low:
            scaled = (np.where(finite, values, low) - low) / (high - low) * 255.0
            out = np.round(scaled).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB (see :func:`load_image`)."""
    if img.mode in _HIGH_BIT_MODES:
        img = _rescale_to_8bit(img)
    if img.mode == "P":
        # A palette may mark one colour as transparent; keep that information as alpha.
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    return img.convert("RGB")  # handles L, 1, CMYK, YCbCr, ... and is a no-op for RGB


def load_image(path: PathLike) -> Image.Image:
    """Read an image file as an 8-bit RGB PIL image.

    Every PIL mode is accepted: grey (``L``, ``1``), colour (``RGB``, ``CMYK``, palette ``P``),
    images with alpha (``LA``, ``RGBA``; composited onto black) and 16/32-bit integer or float
    images (``I;16``, ``I;16B``, ``I``, ``F``; rescaled to 0..255 with the image's own min-max
    range instead of being clipped).

    Raises:
        DataError: the file is missing, corrupt, truncated or not an image.
    """
    img = _open_fully(path)
    try:
        return _to_rgb(img)
    except (ValueError, OSError) as exc:
        raise DataError(
            f"cannot read image {path}: unsupported image mode {img.mode!r} ({exc}). "
            "Convert the file to an 8-bit or 16-bit PNG."
        ) from exc


def _binarise_mask(mask: Image.Image) -> Image.Image:
    """Return an ``L`` image that is 255 where ``mask`` is nonzero and 0 elsewhere."""
    if mask.mode in _HIGH_BIT_MODES:
        values = np.asarray(mask)  # (H, W); converting to L first would clip, not binarise
    else:
        values = np.asarray(mask.convert("L"))  # (H, W) uint8
    return Image.fromarray(np.where(values != 0, 255, 0).astype(np.uint8), mode="L")


def load_mask(
    path: PathLike,
    size_of_image: tuple[int, int],
    image_path: PathLike | None = None,
) -> Image.Image:
    """Read a ground-truth mask as a binary ``L`` image with values {0, 255}.

    Any nonzero value (after conversion to grey) counts as anomalous foreground.

    Args:
        path: the mask file.
        size_of_image: ``(width, height)`` of the image the mask belongs to (``PIL`` order).
        image_path: that image's file, only used to name it in error messages.

    Raises:
        DataError: the mask cannot be read or its size differs from its image.
    """
    mask = _open_fully(path)
    if mask.size != tuple(size_of_image):
        image_name = image_path if image_path is not None else "its image"
        mw, mh = mask.size
        iw, ih = size_of_image
        raise DataError(
            f"mask {path} is {mw}x{mh} pixels but {image_name} is {iw}x{ih}; a mask must have "
            "exactly the size of its image. Re-export the mask at the image's size, or check "
            "that mask and image file names are paired correctly."
        )
    return _binarise_mask(mask)


def image_to_tensor(img: Image.Image, image_size: int) -> torch.Tensor:
    """Resize an image to ``image_size`` x ``image_size`` (bicubic) and make a tensor.

    Equivalent to torchvision's ``Resize((S, S), BICUBIC)`` followed by ``ToTensor()``; no
    normalisation is applied here (the backbone does that).

    Returns:
        float tensor of shape (3, S, S) with values in [0, 1].
    """
    if img.mode != "RGB":
        img = _to_rgb(img)
    img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8))  # (S, S, 3) uint8
    return pixels.permute(2, 0, 1).float().div(255.0)  # (3, S, S)


def mask_to_tensor(mask: Image.Image, image_size: int) -> torch.Tensor:
    """Resize a mask to ``image_size`` x ``image_size`` (nearest) and make a {0, 1} tensor.

    Any nonzero source value is foreground (the mask is binarised to {0, 255} first).

    Returns:
        float tensor of shape (S, S) with values in {0, 1}.
    """
    mask = _binarise_mask(mask).resize((image_size, image_size), Image.Resampling.NEAREST)
    pixels = torch.from_numpy(np.array(mask, dtype=np.uint8))  # (S, S) uint8 in {0, 255}
    return (pixels > 127).float()  # (S, S)


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One image of a dataset: its file, its mask file (if any) and its label (0 / 1)."""

    image_path: Path
    mask_path: Path | None
    label: int


def _list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by file name."""
    return sorted((p for p in folder.iterdir() if _is_image_file(p)), key=lambda p: p.name)


def _list_names(paths: Sequence[Path], limit: int = 5) -> str:
    """``'a.png, b.png'`` for the first ``limit`` paths, with a count of the rest."""
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown if len(paths) <= limit else f"{shown} and {len(paths) - limit} more"


def _check_image_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}.")


def _pair_masks(images: list[Path], image_dir: Path, mask_dir: Path) -> list[Path]:
    """Find the mask of every abnormal image in ``image_dir``; return them in image order.

    A mask pairs with an image of the same file name; if the extension differs (``a.jpg`` /
    ``a.png``), a unique match of the file stem is accepted.
    """
    masks = _list_images(mask_dir)
    by_name = {m.name: m for m in masks}
    by_stem: dict[str, list[Path]] = {}
    for m in masks:
        by_stem.setdefault(m.stem, []).append(m)

    paired: list[Path] = []
    unmatched: list[Path] = []
    for image in images:
        mask = by_name.get(image.name)
        if mask is None:
            candidates = by_stem.get(image.stem, [])
            if len(candidates) > 1:
                raise DataError(
                    f"abnormal image {image} matches several masks "
                    f"({_list_names(candidates)}). Keep one mask per image in {mask_dir}."
                )
            mask = candidates[0] if candidates else None
        if mask is None:
            unmatched.append(image)
        else:
            paired.append(mask)
    if unmatched:
        raise DataError(
            f"abnormal image(s) without a mask: {_list_names(unmatched)}. This dataset has a "
            f"mask folder {mask_dir}, so every abnormal image needs a mask with the same file "
            "name there. Add the missing masks or remove those images (or delete the "
            "anomaly_mask folder if the dataset has no pixel labels)."
        )
    used = set(paired)
    orphans = [m for m in masks if m not in used]
    if orphans:
        raise DataError(
            f"mask(s) without an abnormal image: {_list_names(orphans)}. Every mask needs an "
            f"image with the same file name in {image_dir}. Add the image or delete the mask."
        )
    return paired


class ADDataset(Dataset):
    """One split of one anomaly-detection dataset in the MVFA / BMAD layout.

    ``items`` lists normal images first, then abnormal ones, each class sorted by file name.
    An item is returned as a dict::

        image  float tensor (3, S, S) in [0, 1]
        mask   float tensor (S, S) in {0, 1}   (all zeros for normal images and mask-less sets)
        label  int, 0 = normal, 1 = abnormal
        path   str, the image file

    A split that holds only one class is accepted (few-shot training needs that); metrics that
    need both classes will complain later.

    Args:
        root: the dataset folder, e.g. ``data/Brain_AD`` or ``shared/data/busi``.
        split: the split folder inside ``root``, e.g. ``"test"``, ``"valid"`` or ``"embedded"``.
        image_size: side length ``S`` of the square tensors.
        name: display name; defaults to the folder name of ``root`` without a trailing ``_AD``.
    """

    def __init__(
        self,
        root: PathLike,
        split: str,
        image_size: int = 240,
        name: str | None = None,
    ) -> None:
        _check_image_size(image_size)
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        self.name = name if name is not None else self._default_name(self.root)

        split_dir = self._find_split_dir()
        normal_dir = split_dir / "good" / "img"
        abnormal_dir = split_dir / "Ungood" / "img"
        mask_dir = split_dir / "Ungood" / "anomaly_mask"
        for folder in (normal_dir, abnormal_dir):
            if not folder.is_dir():
                raise DataError(
                    f"missing folder {folder}. A dataset split must look like this:\n{LAYOUT}\n"
                    "Create the folder (it may be empty if the split has no images of that class)."
                )
        self.has_masks = mask_dir.is_dir()

        normal = _list_images(normal_dir)
        abnormal = _list_images(abnormal_dir)
        if not normal and not abnormal:
            raise DataError(
                f"split {split_dir} contains no images: {normal_dir} and {abnormal_dir} are "
                f"empty (accepted extensions: {' '.join(IMAGE_EXTENSIONS)}). Add images or "
                "choose another split."
            )
        if self.has_masks:
            masks: list[Path | None] = list(_pair_masks(abnormal, abnormal_dir, mask_dir))
        else:
            masks = [None] * len(abnormal)

        self.items: list[Item] = [Item(p, None, NORMAL) for p in normal] + [
            Item(p, m, ABNORMAL) for p, m in zip(abnormal, masks)
        ]

    @staticmethod
    def _default_name(root: Path) -> str:
        folder = Path(os.path.abspath(root)).name
        return folder.removesuffix("_AD")

    def _find_split_dir(self) -> Path:
        if not self.root.is_dir():
            raise DataError(
                f"dataset folder {self.root} does not exist (or is not a folder). Check the "
                f"path; a dataset must look like this:\n{LAYOUT}"
            )
        split_dir = self.root / self.split
        if not split_dir.is_dir():
            existing = sorted(
                p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
            listed = ", ".join(existing) if existing else "none"
            raise DataError(
                f"split folder {split_dir} does not exist. Splits found in {self.root}: "
                f"{listed}. Choose one of those splits."
            )
        return split_dir

    # -- basic Dataset protocol --------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        img = load_image(item.image_path)
        image = image_to_tensor(img, self.image_size)  # (3, S, S)
        if item.mask_path is not None:
            mask_img = load_mask(item.mask_path, img.size, image_path=item.image_path)
            mask = mask_to_tensor(mask_img, self.image_size)  # (S, S)
        else:
            mask = torch.zeros(self.image_size, self.image_size)  # (S, S)
        return {"image": image, "mask": mask, "label": item.label, "path": str(item.image_path)}

    def __repr__(self) -> str:
        return (
            f"ADDataset(name={self.name!r}, split={self.split!r}, normal={self.num_normal}, "
            f"abnormal={self.num_abnormal}, has_masks={self.has_masks}, "
            f"image_size={self.image_size})"
        )

    # -- conveniences ------------------------------------------------------------------------

    @property
    def labels(self) -> torch.Tensor:
        """Labels of all items, LongTensor of shape (N,)."""
        return torch.tensor([item.label for item in self.items], dtype=torch.long)

    @property
    def num_normal(self) -> int:
        return sum(item.label == NORMAL for item in self.items)

    @property
    def num_abnormal(self) -> int:
        return sum(item.label == ABNORMAL for item in self.items)

    def subset(self, indices: Sequence[int]) -> ADDataset:
        """A dataset with the items at ``indices`` (same settings, no rescanning of folders)."""
        part = copy.copy(self)
        part.items = [self.items[i] for i in indices]
        return part

    def load_all(self, progress: bool = True) -> dict:
        """Load every item into memory and stack them.

        Returns:
            dict with ``image`` (N, 3, S, S), ``mask`` (N, S, S), ``label`` (N,) long and
            ``path`` (list of N str).
        """
        s = self.image_size
        images, masks, paths = [], [], []
        for i in tqdm(
            range(len(self)),
            desc=f"Loading {self.name}/{self.split}",
            unit="img",
            disable=not show_progress(progress),
        ):
            sample = self[i]
            images.append(sample["image"])
            masks.append(sample["mask"])
            paths.append(sample["path"])
        return {
            "image": torch.stack(images) if images else torch.zeros(0, 3, s, s),  # (N, 3, S, S)
            "mask": torch.stack(masks) if masks else torch.zeros(0, s, s),  # (N, S, S)
            "label": self.labels,  # (N,)
            "path": paths,
        }


class ImageFolder(Dataset):
    """Unlabelled images for prediction: every image file below ``root``, sorted by path.

    The folder is scanned recursively; hidden files and folders and files with other
    extensions are skipped. ``root`` may also be a single image file. Items are dicts with
    ``image`` (3, S, S) in [0, 1] and ``path`` (str).
    """

    def __init__(self, root: PathLike, image_size: int = 240) -> None:
        _check_image_size(image_size)
        self.root = Path(root)
        self.image_size = image_size
        if self.root.is_file() and _is_image_file(self.root):
            self.paths = [self.root]
            return
        if not self.root.is_dir():
            raise DataError(
                f"image folder {self.root} does not exist. Give a folder of images (or one "
                "image file)."
            )
        self.paths = sorted(
            p
            for p in self.root.rglob("*")
            if _is_image_file(p)
            and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        )
        if not self.paths:
            raise DataError(
                f"image folder {self.root} contains no images (accepted extensions: "
                f"{' '.join(IMAGE_EXTENSIONS)}). Add images or choose another folder."
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        return {"image": image_to_tensor(load_image(path), self.image_size), "path": str(path)}


def bmad_root(data_root: PathLike, key: str) -> Path:
    """Folder of a BMAD dataset: ``<data_root>/<Key>_AD`` (or ``<data_root>/<Key>``).

    Raises:
        DataError: ``key`` is not one of :data:`BMAD_KEYS`, or the folder does not exist.
    """
    if key not in BMAD_KEYS:
        raise DataError(f"unknown BMAD dataset {key!r}. Use one of: {', '.join(BMAD_KEYS)}.")
    data_root = Path(data_root)
    for candidate in (data_root / f"{key}_AD", data_root / key):
        if candidate.is_dir():
            return candidate
    raise DataError(
        f"BMAD dataset {key!r} not found: expected the folder {data_root / f'{key}_AD'}. "
        "Download the BMAD archives linked from the MVFA README (Google Drive) and extract "
        f"them into {data_root}, so that it contains {key}_AD/."
    )


# --------------------------------------------------------------------------------------------
# Few-shot selection
# --------------------------------------------------------------------------------------------

_SEED_LINE = re.compile(r"^(?P<kind>[an])-(?P<iterate>\d+)\s*:(?P<names>.*)$")


def read_seed_file(path: PathLike, iterate: int = 0) -> tuple[list[str], list[str]]:
    """Read the image names of one few-shot draw from an official MVFA seed file.

    The file has lines such as::

        a-0: 01471_60.png 00124_80.png     abnormal shots of draw 0
        n-0: 01368_60.png 00303_99.png     normal shots of draw 0

    Args:
        path: the seed file.
        iterate: which draw to read (the number after ``a-`` / ``n-``).

    Returns:
        ``(normal_names, abnormal_names)``; a list is empty if the file has no line of that
        kind for ``iterate`` (e.g. normal-only seed files).

    Raises:
        DataError: unreadable file, malformed line, or no line for ``iterate``.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
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
    return [lookup[n] if n in lookup else lookup[Path(n).stem] for n in wanted]


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

    Returns:
        indices into ``dataset.items``: the normal shots first, then the abnormal ones (only
        the ``k`` normal ones if ``normal_only``); each class in ascending index order.

    Raises:
        DataError: ``k < 1``, too few images of a class, or seed-file names not in the dataset.
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
    """Split a single-split dataset into few-shot support images and the rest for testing.

    Returns:
        ``(support, rest)``, disjoint subsets of ``dataset``; ``support`` holds the shots of
        :func:`select_shots` (seeded draw).

    Raises:
        DataError: as :func:`select_shots`, or the rest would lack a class for evaluation.
    """
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


# --------------------------------------------------------------------------------------------
# Offline augmentation of the few-shot images
# --------------------------------------------------------------------------------------------


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

    Args:
        images: (N, 3, S, S) float.
        masks: (N, S, S) float in {0, 1}.

    Returns:
        ``(images, masks)`` of shapes (11N, 3, S, S) and (11N, S, S), transform-major: rows
        ``t*N .. t*N+N-1`` hold all N inputs under transform ``t``, so the first N rows are the
        originals. Labels therefore repeat as ``labels.repeat(11)``.
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
