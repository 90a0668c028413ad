"""Per-pixel results of a whole split (anomaly maps, masks) kept so that scoring and the
metrics hold one batch of them in memory, not the split.

A small split (under :data:`IN_MEMORY_BYTES`) stays in one tensor; a larger one goes to an
unnamed temporary file, written and read with plain file I/O (not a memory map, whose pages
would count against the process as they are read). Either way the same API:
``store[i]``, ``store[indices]`` and :meth:`PixelStore.chunks` return tensors, and
:meth:`PixelStore.tensor` the whole split for those who want it.
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Iterator

import numpy as np
import torch

IN_MEMORY_BYTES = 16 * 2**20       # a split's maps up to this size stay in memory
CHUNK_PIXELS = 2**20               # pixels per chunk read back (chunks of whole images)


class PixelStore:
    """(N, H, W) values of one dtype, written in order a batch at a time (:meth:`append`)."""

    def __init__(self, count: int, image_shape: tuple[int, ...], dtype: torch.dtype):
        self.shape = (count, *image_shape)
        self.dtype = dtype
        self._numpy_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        self._image_bytes = math.prod(image_shape) * self._numpy_dtype.itemsize
        self._memory: torch.Tensor | None = None
        self._file = None
        self.filled = 0
        if count * self._image_bytes <= IN_MEMORY_BYTES:
            self._memory = torch.empty(self.shape, dtype=dtype)
        else:                           # unnamed: the space returns when the store is gone
            self._file = tempfile.TemporaryFile(prefix="mvfa-pixels-")

    def __len__(self) -> int:
        return self.filled

    def append(self, values: torch.Tensor) -> None:
        """Write the next images (B, H, W)."""
        self.write(self.filled, values)
        self.filled += len(values)

    def write(self, start: int, values: torch.Tensor) -> None:
        """Overwrite images ``start`` .. ``start + B`` with ``values`` (B, H, W)."""
        values = values.to("cpu", self.dtype)
        if start + len(values) > self.shape[0]:
            raise IndexError(f"{start + len(values)} images do not fit a store of "
                             f"{self.shape[0]}")
        if self._memory is not None:
            self._memory[start:start + len(values)] = values
        else:
            os.pwrite(self._file.fileno(), values.contiguous().numpy().tobytes(),
                      start * self._image_bytes)

    def _read(self, start: int, count: int) -> torch.Tensor:
        if self._memory is not None:
            return self._memory[start:start + count]
        data = os.pread(self._file.fileno(), count * self._image_bytes, start * self._image_bytes)
        array = np.frombuffer(bytearray(data), dtype=self._numpy_dtype)
        return torch.from_numpy(array.reshape(count, *self.shape[1:]))

    def __getitem__(self, index) -> torch.Tensor:
        """One image (H, W), a slice, or the images at a sequence of indices (K, H, W)."""
        if isinstance(index, (int, np.integer)):
            index = int(index) + (self.filled if index < 0 else 0)
            if not 0 <= index < self.filled:
                raise IndexError(f"image {index} of a store of {self.filled}")
            return self._read(index, 1)[0]
        if isinstance(index, slice):
            start, stop, step = index.indices(self.filled)
            if step == 1:
                return self._read(start, max(0, stop - start))
            index = range(start, stop, step)
        indices = torch.as_tensor(index).reshape(-1)
        if indices.dtype == torch.bool:
            indices = indices.nonzero().reshape(-1)
        if self._memory is not None:
            return self._memory[:self.filled][indices]
        return torch.stack([self[int(i)] for i in indices]) if len(indices) else \
            torch.empty((0, *self.shape[1:]), dtype=self.dtype)

    def chunks(self, pixels: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(first image, images (B, H, W)) in order, about ``pixels`` (default
        :data:`CHUNK_PIXELS`) pixels at a time."""
        step = _images_per_chunk(self.shape, pixels)
        for start in range(0, self.filled, step):
            yield start, self._read(start, min(step, self.filled - start))

    def tensor(self) -> torch.Tensor:
        """Every image (N, H, W) in one tensor (the whole split in memory)."""
        return self._read(0, self.filled)

    def __repr__(self) -> str:
        where = "memory" if self._memory is not None else "a temporary file"
        return f"PixelStore({self.filled} x {tuple(self.shape[1:])}, {self.dtype}, in {where})"


def _images_per_chunk(shape: tuple[int, ...], pixels: int | None) -> int:
    return max(1, (pixels or CHUNK_PIXELS) // max(1, math.prod(shape[1:])))


def image_chunks(values, pixels: int | None = None) -> Iterator[tuple[int, object]]:
    """(first image, images) of a store, a tensor or an array (N, H, W), a chunk at a time."""
    if isinstance(values, PixelStore):
        yield from values.chunks(pixels)
        return
    step = _images_per_chunk(values.shape, pixels)
    for start in range(0, len(values), step):
        yield start, values[start:start + step]
