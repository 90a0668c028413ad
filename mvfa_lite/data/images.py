"""Recognising, reading image and mask files, and turning them into tensors.

* :func:`is_image_file` tells which files are images; :func:`refuse_broken_links` stops on
  symbolic links named like images that lead nowhere (mvfa-lite never skips images silently);
* :func:`load_image` reads any PIL mode, including 16-bit and float images, as 8-bit RGB;
* :func:`load_mask` reads a ground-truth mask as a binary {0, 255} image, foreground where
  the value is above half the range of the file's pixel type (as the official code does);
* :func:`inspect_image` decodes a file once and reports its size and non-finite pixels,
  for the checks made before any training;
* :func:`image_to_tensor` and :func:`mask_to_tensor` make the (3, S, S) and (S, S) tensors
  used everywhere else; :func:`overlay` turns an image and its anomaly map back into a
  picture.

Every problem with a file raises :class:`~mvfa_lite.errors.DataError` with a message that
names the file and says how to fix it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from ..errors import DataError

#: a path argument: a string or any os.PathLike (pathlib.Path, ...)
PathLike = str | os.PathLike

#: File name endings (lower case) that are read as images; everything else is ignored.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# PIL modes with more than 8 bits per pixel. PIL's own convert("RGB") clips them to 0..255,
# which makes a typical 16-bit scan almost entirely white, so we rescale them ourselves.
_HIGH_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
# Modes with an alpha channel; the alpha is removed by compositing onto black.
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def is_image_name(path: Path) -> bool:
    """True for visible file names with an accepted image extension."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def is_image_file(path: Path) -> bool:
    """True for visible regular files (or working links to them) named like an image."""
    return is_image_name(path) and path.is_file()


def is_broken_link(path: Path) -> bool:
    """True for a symbolic link whose target is missing (or a loop of links)."""
    return path.is_symlink() and not path.exists()


def refuse_broken_links(paths: Sequence[Path]) -> None:
    """Raise DataError naming the symbolic links among ``paths`` that lead nowhere, or the
    first path whose name is not valid UTF-8 (it could not be written into scores.csv or
    the JSON results at the end of the run)."""
    for path in paths:
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            raise DataError(f"the file name {shown} is not valid UTF-8 (another encoding, e.g. "
                            "Latin-1), so it cannot be written into the results; rename it, "
                            "e.g. with convmv -f latin1 -t utf8.") from None
    broken = sorted(p for p in paths if is_broken_link(p))
    if broken:
        raise DataError(
            f"symbolic link(s) named like images that do not resolve: "
            f"{list_names([_describe_link(p) for p in broken])}. Repair the links or delete "
            "them (mvfa-lite does not skip images silently).")


def _describe_link(path: Path) -> str:
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return f"{path} (a loop of links)"
    return f"{path} -> {os.readlink(path)} (missing)"


def list_names(paths: Sequence[Path | str], limit: int = 5) -> str:
    """``'a.png, b.png'`` for the first ``limit`` paths, with a count of the rest."""
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown if len(paths) <= limit else f"{shown} and {len(paths) - limit} more"


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


def _rescale_to_8bit(img: Image.Image, path: PathLike | None) -> Image.Image:
    """Map a 16/32-bit integer or float image to 8-bit grey with its own min-max range.

    The darkest pixel becomes 0 and the brightest 255; a constant image becomes all zeros.
    Non-finite float values (NaN, inf) are treated as the minimum; an image without any
    finite value holds no picture at all and raises DataError.
    """
    values = np.asarray(img, dtype=np.float64)  # (H, W)
    finite = np.isfinite(values)
    if not finite.any():
        raise DataError(f"image {path if path is not None else '(in memory)'} holds no finite "
                        "pixel value (all NaN or inf), so it has no picture to score. Replace "
                        "or delete the file.")
    out = np.zeros(values.shape, dtype=np.uint8)
    low, high = values[finite].min(), values[finite].max()
    if high > low:
        scaled = (np.where(finite, values, low) - low) / (high - low) * 255.0
        out = np.round(scaled).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def _to_rgb(img: Image.Image, path: PathLike | None = None) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB (see :func:`load_image`)."""
    if img.mode in _HIGH_BIT_MODES:
        img = _rescale_to_8bit(img, path)
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
    range instead of being clipped). Raises DataError when the file is missing, corrupt,
    truncated or not an image, or holds no finite pixel value.
    """
    return _convert(_open_fully(path), path)


def _convert(img: Image.Image, path: PathLike) -> Image.Image:
    """:func:`_to_rgb` for a file's image, with failures turned into DataErrors."""
    try:
        return _to_rgb(img, path)
    except (ValueError, OSError) as exc:
        raise DataError(
            f"cannot read image {path}: unsupported image mode {img.mode!r} ({exc}). "
            "Convert the file to an 8-bit or 16-bit PNG."
        ) from exc


def inspect_image(path: PathLike) -> tuple[tuple[int, int], bool]:
    """Decode an image file completely, as :func:`load_image` would -> ``((width, height),
    has_non_finite)``: the stored size, and whether some (not all) pixels are NaN or inf
    (float images; they are drawn as the darkest value). Raises DataError as
    :func:`load_image` does.
    """
    img = _open_fully(path)
    _convert(img, path)  # raises what load_image raises (unsupported mode, no finite pixel)
    has_non_finite = img.mode == "F" and not np.isfinite(np.asarray(img)).all()
    return img.size, bool(has_non_finite)


# Half the value range of a mask's pixel type: values above it are foreground. The official
# code reads masks as 8-bit grey and thresholds ToTensor's [0, 1] at 0.5, i.e. at 127.5.
_MASK_THRESHOLDS = {"F": 0.5, "I": 32767.5, "I;16": 32767.5, "I;16L": 32767.5,
                    "I;16B": 32767.5, "I;16N": 32767.5}


def _binarise_mask(mask: Image.Image) -> Image.Image:
    """Return an ``L`` image that is 255 where ``mask`` is above half its value range.

    8-bit masks (and every colour mode, read as grey) use 127.5, 16-bit ones (``I;16``, and
    ``I``, which is how 16-bit files are often opened) 32767.5, float ones 0.5. A mask
    stored with background 1 is therefore read correctly, and a mask stored as 0/1 reads as
    empty (the checks before training name such masks).
    """
    if mask.mode in _MASK_THRESHOLDS:
        values = np.asarray(mask, dtype=np.float64)  # (H, W); L would clip, not binarise
        threshold = _MASK_THRESHOLDS[mask.mode]
    else:
        values = np.asarray(mask.convert("L"))  # (H, W) uint8
        threshold = 127.5
    return Image.fromarray(np.where(values > threshold, 255, 0).astype(np.uint8), mode="L")


def load_mask(
    path: PathLike,
    size_of_image: tuple[int, int],
    image_path: PathLike | None = None,
) -> Image.Image:
    """Read the mask file ``path`` as a binary ``L`` image with values {0, 255}.

    Values above half the range of the file's pixel type (above 127 for 8-bit masks) are
    anomalous foreground, as in the official code. ``size_of_image`` is ``(width, height)``
    of the image the mask belongs to (``PIL`` order), ``image_path`` that image's file (only
    used to name it in error messages). Raises DataError when the mask cannot be read or its
    size differs from its image.
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
    """PIL image -> float tensor (3, S, S) in [0, 1], resized to S = ``image_size`` (bicubic).

    Equivalent to torchvision's ``Resize((S, S), BICUBIC)`` followed by ``ToTensor()``; no
    normalisation is applied here (the backbone does that).
    """
    if img.mode != "RGB":
        img = _to_rgb(img)
    img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8))  # (S, S, 3) uint8
    return pixels.permute(2, 0, 1).float().div(255.0)  # (3, S, S)


def mask_to_tensor(mask: Image.Image, image_size: int) -> torch.Tensor:
    """PIL mask -> float tensor (S, S) in {0, 1}, resized to S = ``image_size`` (nearest).

    Values above half the mask's value range are foreground (it is binarised to {0, 255}
    first, as :func:`load_mask` does).
    """
    mask = _binarise_mask(mask).resize((image_size, image_size), Image.Resampling.NEAREST)
    pixels = torch.from_numpy(np.array(mask, dtype=np.uint8))  # (S, S) uint8 in {0, 255}
    return (pixels > 127).float()  # (S, S)


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.45,
            cmap: str = "jet") -> Image.Image:
    """Image (3, S, S) in [0, 1] and a map (S, S) in [0, 1] -> RGB picture of the blend.

    The map is not re-normalised per image: a normal image whose map stays low looks calm,
    which is what a reader should see (per-image normalisation makes every image look red).
    """
    rgb = image.permute(1, 2, 0).clamp(0, 1).numpy()                   # (S, S, 3)
    colour = colormaps[cmap](heat.clamp(0, 1).numpy())[..., :3]         # (S, S, 3)
    blend = (1 - alpha) * rgb + alpha * colour
    return Image.fromarray((blend * 255).round().astype(np.uint8))
