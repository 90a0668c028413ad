"""Where the datasets are: the sets shipped with mvfa-lite, the extra test sets, BMAD.

Two small sets ship with the package (in a source checkout they are ``data/<name>``; in an
installed wheel, package data under ``mvfa_lite/shipped/<name>``), so every notebook and
test runs on a fresh clone, on Colab and after ``pip install``:

``chestxray_kermany224``   40 paediatric chest X-rays (20 normal, 20 pneumonia) in the split
                           ``embedded``, plus 64 normal ones in ``train_good``; image labels
                           only; CC BY 4.0 (Kermany, Zhang and Goldbaum 2018).
``chestxray_synthlesion``  64 of those normal X-rays, half with synthetic lesions planted by
                           :mod:`mvfa_lite.data.synthlesions`, exact pixel masks; splits ``valid``
                           (8 + 8) and ``test`` (24 + 24); CC BY 4.0 as its source.

Two more real sets (breast ultrasound with masks, brain MRI) are used as extra test cases
where they exist, in ``$MVFA_SHARED_DATA`` (default ``../shared/data`` beside the clone);
their licences do not allow redistribution. The six BMAD sets (:data:`BMAD_KEYS`) are
downloaded by the user.

:func:`path` turns a set's name or a folder into a folder, :func:`bmad_path` a BMAD key
and the folder the user extracted BMAD into, and :func:`leave_one_out` a BMAD folder into
the other five (the sources of the paper's zero-shot setting); none falls back to another
set: a set that is not here stops with a message saying how to get it.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError

SHIPPED = ("chestxray_kermany224", "chestxray_synthlesion")
EXTRA = ("busi", "brainmri_navoneel")
#: The six BMAD datasets, stored as ``<data_root>/<Key>_AD``.
BMAD_KEYS = ("Brain", "Liver", "Retina_RESC", "Retina_OCT2017", "Chest", "Histopathology")
#: (support split, test split) of each named set
SPLITS = {"chestxray_kermany224": ("embedded", "embedded"),
          "chestxray_synthlesion": ("valid", "test"),
          "busi": ("embedded", "embedded"), "brainmri_navoneel": ("embedded", "embedded")}

_PACKAGE = Path(__file__).resolve().parent.parent      # mvfa_lite/
BMAD_HINT = ("the six BMAD sets come as the MVFA authors' archives (links in the MVFA README, "
             "github.com/MediaBrain-SJTU/MVFA-AD); extract them so that <folder>/Brain_AD exists")


def shipped_dir() -> Path:
    """The folder holding the shipped sets: package data when installed, else ``<repo>/data``."""
    installed = _PACKAGE / "shipped"
    return installed if installed.is_dir() else _PACKAGE.parent / "data"


def extra_dir() -> Path:
    """``$MVFA_SHARED_DATA``, else ``../shared/data`` beside the source checkout."""
    return Path(os.environ.get("MVFA_SHARED_DATA", _PACKAGE.parent.parent / "shared" / "data"))


def available() -> dict[str, Path]:
    """Every named set present on this machine, name -> folder."""
    places = {name: shipped_dir() / name for name in SHIPPED}
    places.update({name: extra_dir() / name for name in EXTRA})
    return {name: folder for name, folder in places.items() if folder.is_dir()}


def path(spec: str | os.PathLike) -> Path:
    """The folder of a named set (:data:`SHIPPED`, :data:`EXTRA`) or of a dataset path; else
    a DataError, one line naming the set or folder and how to get it."""
    name = str(spec)
    if name in SHIPPED or name in EXTRA:
        folder = available().get(name)
        if folder is not None:
            return folder
        if name in SHIPPED:
            raise DataError(f"shipped set {name!r} is missing from {shipped_dir()}: reinstall "
                            "mvfa-lite or restore data/ from git (git checkout -- data).")
        raise DataError(f"set {name!r} is not on this machine: it is not shipped (its licence "
                        f"does not allow it); set MVFA_SHARED_DATA to a folder holding {name}/, "
                        f"or use a shipped set: {', '.join(SHIPPED)}.")
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist. Give a folder in the BMAD "
                        f"layout, a shipped set ({', '.join(SHIPPED)}), or download BMAD: "
                        f"{BMAD_HINT}.")
    return folder


def bmad_path(data_root: str | os.PathLike, key: str) -> Path:
    """Folder of a BMAD dataset: ``<data_root>/<Key>_AD`` (or ``<data_root>/<Key>``).

    DataError when ``key`` is not one of :data:`BMAD_KEYS` (naming them), or when the folder
    does not exist (saying where to download BMAD and where to extract it).
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


def leave_one_out(target: str | os.PathLike) -> list[Path]:
    """The sources of the paper's zero-shot setting (Table 2) for a BMAD ``target`` folder
    (``<data_root>/<Key>_AD`` or ``<data_root>/<Key>``): the other five BMAD folders beside
    it, in :data:`BMAD_KEYS` order. DataError when the folder is not named after a BMAD key
    or a sibling is missing."""
    target = Path(target)
    key = target.name.removesuffix("_AD")
    if key not in BMAD_KEYS:
        raise DataError(f"{target} is not a BMAD folder (<Key>_AD with Key one of "
                        f"{', '.join(BMAD_KEYS)}), so it has no leave-one-out sources; give "
                        "the sources as a list of folders instead.")
    return [bmad_path(target.parent, other) for other in BMAD_KEYS if other != key]


def splits(spec: str | os.PathLike) -> tuple[str, str]:
    """(support split, test split) of a named set; BMAD folders use ("valid", "test")."""
    return SPLITS.get(str(spec), ("valid", "test"))
