"""Medical anomaly-detection datasets in the MVFA / BMAD layout.

Every dataset split is a folder of this shape::

    <root>/<split>/good/img/*              normal images
    <root>/<split>/Ungood/img/*            abnormal images
    <root>/<split>/Ungood/anomaly_mask/*   binary masks, same file name as the image
                                           (only for datasets with pixel labels)

BMAD ships the splits ``valid`` and ``test``; the small embedded sets of this project have a
single split called ``embedded``.

This module provides :class:`ADDataset`, one split of one dataset, :class:`ImageFolder` for
unlabelled images, and :func:`bmad_root`. Reading the files is :mod:`mvfa_lite.images`; the
few-shot selection and augmentation is :mod:`mvfa_lite.shots`.

Labels are ``0`` for normal and ``1`` for abnormal images. Every problem with the input data
raises :class:`~mvfa_lite.errors.DataError` with a message that names the file or folder at
fault and says how to fix it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .errors import DataError
from .images import (IMAGE_EXTENSIONS, image_to_tensor, is_image_file, load_image, load_mask,
                     mask_to_tensor)
from .runtime import show_progress

__all__ = [
    "ABNORMAL",
    "ADDataset",
    "BMAD_KEYS",
    "ImageFolder",
    "Item",
    "NORMAL",
    "bmad_root",
]

PathLike = str | os.PathLike

NORMAL = 0
ABNORMAL = 1

#: The six BMAD datasets, stored as ``<data_root>/<Key>_AD``.
BMAD_KEYS = ("Brain", "Liver", "Retina_RESC", "Retina_OCT2017", "Chest", "Histopathology")

LAYOUT = (
    "<root>/<split>/good/img/*              normal images\n"
    "<root>/<split>/Ungood/img/*            abnormal images\n"
    "<root>/<split>/Ungood/anomaly_mask/*   binary masks (optional), same file names as Ungood/img"
)


@dataclass(frozen=True)
class Item:
    """One image of a dataset: its file, its mask file (if any) and its label (0 / 1)."""

    image_path: Path
    mask_path: Path | None
    label: int


def _list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by file name."""
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


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
        if self.root.is_file() and is_image_file(self.root):
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
            if is_image_file(p)
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
# The small embedded datasets used by the tests, the notebooks and the book
# --------------------------------------------------------------------------------------------

_REPO = Path(__file__).resolve().parent.parent
EMBEDDED_SETS = ("chestxray_kermany224", "busi", "brainmri_navoneel")


def embedded_root(name: str) -> Path:
    """Folder of an embedded set: ``<repo>/data/<name>`` (the CC BY 4.0 chest X-rays ship
    there), else ``$MVFA_SHARED_DATA/<name>``, else ``<repo>/../shared/data/<name>``."""
    if name not in EMBEDDED_SETS:
        raise DataError(f"unknown embedded set {name!r}; choose from {', '.join(EMBEDDED_SETS)}.")
    places = [_REPO / "data", Path(os.environ.get("MVFA_SHARED_DATA", _REPO.parent / "shared" / "data"))]
    for place in places:
        if (place / name / "embedded").is_dir():
            return place / name
    raise DataError(
        f"embedded set {name!r} not found in {' or '.join(str(p) for p in places)}. Only the chest "
        "X-rays ship with mvfa-lite (their licence allows it); for busi or brainmri_navoneel set "
        "MVFA_SHARED_DATA to the folder holding them, or use chestxray_kermany224.")


def dataset_root(spec: str | os.PathLike, fallback: str | None = "chestxray_kermany224") -> Path:
    """A dataset folder from an embedded set's name or a path.

    If ``spec`` names an embedded set that is not on this machine, ``fallback`` is used
    instead (with a printed note), so that notebooks run anywhere, Colab included.
    """
    if str(spec) not in EMBEDDED_SETS:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise DataError(f"dataset folder {path} does not exist. Give a folder in the BMAD "
                            f"layout or one of the embedded sets: {', '.join(EMBEDDED_SETS)}.")
        return path
    try:
        return embedded_root(str(spec))
    except DataError as error:
        if fallback is None or fallback == spec:
            raise
        print(f"note: {error}\nusing {fallback!r} instead.")
        return embedded_root(fallback)
