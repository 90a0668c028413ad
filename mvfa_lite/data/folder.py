"""The user's own images, for predict: every image file below a folder, no labels, no masks.

Unlike a dataset in the BMAD layout (:mod:`mvfa_lite.data.layout`), the folder may be of any
shape; it is scanned recursively and may also be a single image file. The files are checked
as a dataset's are (:meth:`ImageFolder.check`, the same DataErrors and DataWarnings).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import DataError, DataWarning
from ..outputs import OUTPUT_MARKER
from .images import (
    IMAGE_EXTENSIONS,
    PathLike,
    image_to_tensor,
    is_image_file,
    is_image_name,
    list_names,
    load_image,
    refuse_broken_links,
)
from .layout import Item, check_items, require_positive_int_size


class ImageFolder(Dataset):
    """Unlabelled images for prediction: every image file below ``root``, sorted by path.

    The folder is scanned recursively; hidden files and folders and files with other
    extensions are skipped, and so are the folders in ``exclude`` (the command's own output
    folder) and every folder written by mvfa-lite (it holds :data:`OUTPUT_MARKER`), so that
    earlier overlays are never scored as images. ``root`` may also be a single image file.
    Items are dicts with ``image`` (3, S, S) in [0, 1] and ``path`` (str).
    """

    def __init__(self, root: PathLike, image_size: int = 240,
                 exclude: Sequence[PathLike] = ()) -> None:
        require_positive_int_size(image_size)
        self.root = Path(root)
        self.image_size = image_size
        refuse_broken_links([self.root] if is_image_name(self.root) else [])
        if self.root.is_file() and is_image_file(self.root):
            self.paths = [self.root]
            return
        if not self.root.is_dir():
            raise DataError(
                f"image folder {self.root} does not exist. Give a folder of images (or one "
                "image file)."
            )
        self.paths, skipped, links = self._scan({Path(os.path.realpath(p)) for p in exclude})
        if links:
            warnings.warn(f"not reading {list_names(links)}: link(s) to folders are not "
                          "followed (a loop or a system folder could be read whole); give the "
                          "folder it leads to on its own, or copy its images in.", DataWarning,
                          stacklevel=2)
        if skipped:
            warnings.warn(f"not reading {list_names(skipped)}: folder(s) written by mvfa-lite, "
                          "whose overlays are outputs, not images to score.", DataWarning,
                          stacklevel=2)
        if not self.paths:
            raise DataError(
                f"image folder {self.root} contains no images (accepted extensions: "
                f"{' '.join(IMAGE_EXTENSIONS)}). Add images or choose another folder."
            )

    def _scan(self, exclude: set[Path]) -> tuple[list[Path], list[Path], list[Path]]:
        """-> (image files, skipped output folders, skipped links to folders), walking
        ``root`` without following links to folders."""
        paths, skipped, links = [], [], []
        for folder, subfolders, files in os.walk(self.root):
            folder = Path(folder)
            if Path(os.path.realpath(folder)) in exclude:
                subfolders.clear()
                continue
            if OUTPUT_MARKER in files:
                skipped.append(folder)
                subfolders.clear()
                continue
            subfolders[:] = [s for s in subfolders if not s.startswith(".")]
            links += [folder / s for s in subfolders if (folder / s).is_symlink()]
            named = [folder / name for name in files if is_image_name(Path(name))]
            refuse_broken_links(named)
            paths += [p for p in named if is_image_file(p)]
        return sorted(paths), sorted(skipped), sorted(links)

    def check(self, min_side: int = 1, progress: bool = True) -> ImageFolder:
        """Open every image once before scoring (see :meth:`.ADDataset.check`); returns ``self``."""
        items = [Item(path, None, -1) for path in self.paths]
        check_items(items, min_side, f"checking {self.root}", progress)
        return self

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        return {"image": image_to_tensor(load_image(path), self.image_size), "path": str(path)}
