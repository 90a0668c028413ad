"""Medical anomaly-detection datasets in the MVFA / BMAD layout.

Every dataset split is a folder of this shape::

    <root>/<split>/good/img/*              normal images
    <root>/<split>/Ungood/img/*            abnormal images
    <root>/<split>/Ungood/anomaly_mask/*   binary masks, same file name as the image
                                           (only for datasets with pixel labels; BMAD's
                                           own name for it, Ungood/label/, works too)

BMAD ships the splits ``valid`` and ``test``; the small embedded sets of this project have a
single split called ``embedded``.

This module provides :class:`ADDataset`, one split of one dataset, and the checks of its
files. Listing a folder reports broken symbolic links named like images; :meth:`ADDataset.check`
opens every file once before any training, so that a bad file stops a run at its start, not
after hours. The user's own unlabelled images (for predict) are
:class:`~mvfa_lite.data.folder.ImageFolder`; reading the files is :mod:`mvfa_lite.data.images`;
the few-shot selection and augmentation is :mod:`mvfa_lite.data.shots`; where the datasets
are is :mod:`mvfa_lite.data.catalogue`.

Labels are ``0`` for normal and ``1`` for abnormal images. Every problem with the input data
raises :class:`~mvfa_lite.errors.DataError` with a message that names the file or folder at
fault and says how to fix it; doubtful data that can still be used (empty masks, partly NaN
images) is reported by a :class:`~mvfa_lite.errors.DataWarning` naming the files.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..errors import DataError, DataWarning
from ..runtime import show_progress
from .images import (
    IMAGE_EXTENSIONS,
    PathLike,
    image_to_tensor,
    inspect_image,
    is_image_file,
    is_image_name,
    list_names,
    load_image,
    load_mask,
    mask_to_tensor,
    refuse_broken_links,
)

NORMAL = 0
ABNORMAL = 1

LAYOUT = (
    "<root>/<split>/good/img/*              normal images\n"
    "<root>/<split>/Ungood/img/*            abnormal images\n"
    "<root>/<split>/Ungood/anomaly_mask/*   binary masks (optional), same file names as Ungood/img\n"
    "                                       (or Ungood/label/*, BMAD's name)"
)
MASK_FOLDERS = ("anomaly_mask", "label")   # MVFA's name, BMAD's (and anomalib's) name


def _mask_folder(abnormal: Path) -> Path:
    """Ungood/anomaly_mask or BMAD's Ungood/label, whichever exists (not both)."""
    found = [abnormal / name for name in MASK_FOLDERS if (abnormal / name).is_dir()]
    if len(found) > 1:
        raise DataError(f"{abnormal} has two mask folders, {found[0].name}/ and "
                        f"{found[1].name}/; keep one (they are two names for the same thing).")
    return found[0] if found else abnormal / MASK_FOLDERS[0]


@dataclass(frozen=True)
class Item:
    """One image of a dataset: its file, its mask file (if any) and its label (0 / 1)."""

    image_path: Path
    mask_path: Path | None
    label: int


def _list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by file name; DataError when some
    entries named like images are symbolic links that do not resolve."""
    entries = [p for p in folder.iterdir() if is_image_name(p)]
    refuse_broken_links(entries)
    return sorted((p for p in entries if is_image_file(p)), key=lambda p: p.name)


def require_positive_int_size(image_size: int) -> None:
    """Raise DataError unless ``image_size`` is a whole number >= 1 (not a bool)."""
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
                    f"({list_names(candidates)}). Keep one mask per image in {mask_dir}."
                )
            mask = candidates[0] if candidates else None
        if mask is None:
            unmatched.append(image)
        else:
            paired.append(mask)
    if unmatched:
        raise DataError(
            f"abnormal image(s) without a mask: {list_names(unmatched)}. This dataset has a "
            f"mask folder {mask_dir}, so every abnormal image needs a mask with the same file "
            "name there. Add the missing masks or remove those images (or delete the "
            "anomaly_mask folder if the dataset has no pixel labels)."
        )
    used = set(paired)
    orphans = [m for m in masks if m not in used]
    if orphans:
        raise DataError(
            f"mask(s) without an abnormal image: {list_names(orphans)}. Every mask needs an "
            f"image with the same file name in {image_dir}. Add the image or delete the mask."
        )
    return paired


def _inspect(item: Item, min_side: int) -> tuple[str | None, set[str]]:
    """Decode one item's image (and mask) -> (problem or None, findings).

    Findings: ``"non_finite"`` (some NaN / inf pixels), ``"empty_mask"``, ``"full_mask"``.
    """
    try:
        size, non_finite = inspect_image(item.image_path)
        if min(size) < min_side:
            return (f"image {item.image_path} is {size[0]}x{size[1]} pixels, smaller than one "
                    f"{min_side}x{min_side} patch of the backbone. Remove it or replace it with "
                    "the full-size image."), set()
        findings = {"non_finite"} if non_finite else set()
        if item.mask_path is not None:
            foreground = np.asarray(load_mask(item.mask_path, size, item.image_path)) > 0
            findings |= {"empty_mask"} if not foreground.any() else set()
            findings |= {"full_mask"} if foreground.all() else set()
        return None, findings
    except DataError as error:
        return str(error), set()


def check_items(items: list[Item], min_side: int, description: str,
                progress: bool) -> dict[str, list[Path]]:
    """Decode every item in parallel; raise one DataError for every unusable file, return
    the image paths of each finding (see :func:`_inspect`)."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # PIL decodes without holding the GIL
        results = list(tqdm(pool.map(lambda item: _inspect(item, min_side), items),
                            total=len(items), desc=description, unit="img",
                            disable=not show_progress(progress)))
    problems = [(item.image_path, problem) for item, (problem, _) in zip(items, results)
                if problem is not None]
    if len(problems) == 1:
        raise DataError(problems[0][1])
    if problems:
        raise DataError(f"{len(problems)} images cannot be used; fix or remove them. First: "
                        f"{problems[0][1]} Also: {list_names([p for p, _ in problems[1:]])}.")
    found: dict[str, list[Path]] = {"non_finite": [], "empty_mask": [], "full_mask": []}
    for item, (_, findings) in zip(items, results):
        for finding in findings:
            found[finding].append(item.image_path)
    if found["non_finite"]:
        warnings.warn(f"{len(found['non_finite'])} image(s) hold NaN or inf pixels, drawn as "
                      f"the darkest value: {list_names(found['non_finite'])}.", DataWarning,
                      stacklevel=3)
    return found


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

    ``root`` is the dataset folder (e.g. ``data/Brain_AD`` or ``shared/data/busi``), ``split``
    the split folder inside it (e.g. ``"test"``, ``"valid"`` or ``"embedded"``), ``image_size``
    the side ``S`` of the square tensors, ``name`` the display name (default: the folder name
    of ``root`` without a trailing ``_AD``).
    """

    def __init__(
        self,
        root: PathLike,
        split: str,
        image_size: int = 240,
        name: str | None = None,
    ) -> None:
        require_positive_int_size(image_size)
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        self.name = name if name is not None else self._default_name(self.root)

        split_dir = self._find_split_dir()
        normal_dir = split_dir / "good" / "img"
        abnormal_dir = split_dir / "Ungood" / "img"
        mask_dir = _mask_folder(split_dir / "Ungood")
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

    def check(self, min_side: int = 1, progress: bool = True) -> ADDataset:
        """Open every image and mask once, before any training; returns ``self``.

        One DataError names every image that cannot be decoded, holds no finite pixel or is
        smaller than ``min_side`` (the backbone's patch), and every mask that cannot be read
        or differs in size from its image. A :class:`~mvfa_lite.errors.DataWarning` names the
        images with some NaN / inf pixels, the masks that mark no pixel (the pixel metrics
        count those images' pixels as normal, and are left out when no mask marks any pixel)
        and the masks that cover the whole image.
        """
        where = self.root / self.split
        found = check_items(self.items, min_side, f"checking {self.name}/{self.split}",
                             progress)
        empty, full = found["empty_mask"], found["full_mask"]
        if empty:
            dropped = (" No mask of this split marks any pixel, so its pixel metrics "
                       "(pixel_auroc, pixel_ap, aupro) are left out."
                       if len(empty) == self.num_abnormal else "")
            warnings.warn(
                f"{len(empty)} abnormal image(s) of {where} have an empty mask: "
                f"{list_names(empty)}. Masks are foreground above half their value range "
                "(above 127 in 8-bit files), as in the official code, so a mask saved as 0/1 "
                f"reads as empty: save lesions as 255.{dropped}", DataWarning, stacklevel=2)
        if full:
            warnings.warn(
                f"{len(full)} mask(s) of {where} mark the whole image as lesion: "
                f"{list_names(full)}. Check that they are not inverted (lesion white, "
                "background black).", DataWarning, stacklevel=2)
        return self

    def require_both_classes(self, role: str = "test") -> ADDataset:
        """Raise DataError unless the split holds normal and abnormal images; returns ``self``."""
        if self.num_normal == 0 or self.num_abnormal == 0:
            raise DataError(
                f"the {role} split {self.root / self.split} holds {self.num_normal} normal and "
                f"{self.num_abnormal} abnormal images; image AUROC and the other metrics need "
                "both classes. Add images of the missing class (good/img or Ungood/img) or "
                "choose another split.")
        return self

    def load_all(self, progress: bool = True) -> dict:
        """Load every item into memory and stack them -> dict with ``image`` (N, 3, S, S),
        ``mask`` (N, S, S), ``label`` (N,) long and ``path`` (list of N str)."""
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
