"""The one small interface every image source in glmed satisfies.

Readers hide four libraries (scikit-image, tifffile, OpenSlide, nibabel) behind the same
calls, so the sampler and the inferer never care whether a region comes from a JPEG in
memory or from a 100k-pixel slide read lazily. :class:`ArrayReader` wraps an array that
is already in memory and stands in for a slide in tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence, Tuple

import numpy as np

from glmed.types import Box, Size


class ImageReader(ABC):
    """A 2-D image, possibly multi-resolution, read by regions.

    Arrays returned are ``height x width x channels`` (channels last, as image files store
    them), in the file's own dtype. Coordinates follow :mod:`glmed.types`.
    """

    name: str = "<array>"
    """What to call this image in messages: usually its path."""

    @property
    @abstractmethod
    def size(self) -> Size:
        """``(height, width)`` at full resolution (level 0)."""

    @property
    @abstractmethod
    def channels(self) -> int:
        """Number of channels of every array this reader returns."""

    @property
    def level_downsamples(self) -> Tuple[float, ...]:
        """Downsample factor of each pyramid level relative to level 0 (``(1.0,)`` if flat)."""
        return (1.0,)

    @property
    def level_sizes(self) -> Tuple[Size, ...]:
        """``(height, width)`` of each pyramid level."""
        return (self.size,)

    @abstractmethod
    def read(self, box: Box, level: int = 0) -> np.ndarray:
        """Read a region given in level-0 pixels, returned at ``level``'s resolution.

        The box must lie inside the image; only the region is decoded where the format
        allows it.
        """

    def resized(self, size: Size) -> np.ndarray:
        """The whole image resampled to ``size`` (the global branch's view).

        Reads the smallest pyramid level that is still at least ``size`` and resamples it
        with area averaging, so a slide is never decoded at full resolution for this.
        """
        level = self.best_level_for(size)
        h, w = self.size
        return resize_image(self.read((0, 0, h, w), level=level), size)

    def best_level_for(self, size: Size) -> int:
        """The coarsest level whose size is still at least ``size`` on both axes."""
        best = 0
        for index, (lh, lw) in enumerate(self.level_sizes):
            if lh >= size[0] and lw >= size[1]:
                best = index
        return best

    def close(self) -> None:
        """Release file handles; a closed reader must not be used again."""

    def __enter__(self) -> "ImageReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArrayReader(ImageReader):
    """An in-memory ``H x W`` or ``H x W x C`` array as an :class:`ImageReader`."""

    def __init__(self, array: np.ndarray, name: str = "<array>") -> None:
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"{name}: expected an image of shape H x W or H x W x C, got {array.shape}")
        self._array = array
        self.name = name

    @property
    def size(self) -> Size:
        return (int(self._array.shape[0]), int(self._array.shape[1]))

    @property
    def channels(self) -> int:
        return int(self._array.shape[2])

    def read(self, box: Box, level: int = 0) -> np.ndarray:
        if level != 0:
            raise ValueError(f"{self.name}: an in-memory array has only level 0, asked for level {level}")
        check_box(box, self.size, self.name)
        r0, c0, r1, c1 = (int(v) for v in box)
        return self._array[r0:r1, c0:c1]


def check_box(box: Sequence[int], size: Size, name: str) -> None:
    """Raise a ValueError naming the image if ``box`` is empty or leaves the image."""
    r0, c0, r1, c1 = (int(v) for v in box)
    if not (0 <= r0 < r1 <= size[0] and 0 <= c0 < c1 <= size[1]):
        raise ValueError(f"{name}: box {tuple(box)} is empty or outside the image of size {size}")


def resize_image(array: np.ndarray, size: Size) -> np.ndarray:
    """Resample an ``H x W x C`` image to ``size`` with area averaging (anti-aliased), keeping its dtype."""
    import torch
    import torch.nn.functional as F

    if tuple(array.shape[:2]) == tuple(size):
        return array
    dtype = array.dtype
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(tensor, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    out = out[0].permute(1, 2, 0).numpy()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(dtype)
