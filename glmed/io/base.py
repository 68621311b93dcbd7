"""The one small interface every image source in glmed satisfies.

Readers hide four libraries (Pillow, tifffile, OpenSlide, nibabel) behind the same calls,
so the sampler and the inferer never care whether a region comes from a JPEG in memory or
from a 100k-pixel slide read lazily. :class:`ImageReader` does the shared work (checking
boxes and levels, mapping a level-0 box onto a level, the pixel limit, the streamed
downsampled view); a format only says how to read a box already on a level's pixel grid
(``_read_level``). :class:`DecodedReader` is the base of formats that must be decoded
whole (JPEG, PNG, NIfTI): decoded once, on the first read, then sliced.
:class:`ArrayReader` wraps an array already in memory and stands in for a slide in tests.
"""

from __future__ import annotations

import struct
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from numpy.typing import DTypeLike

from glmed.conventions import Box, Size
from glmed.geometry import footprint

DEFAULT_MAX_PIXELS = 2**30
"""The most pixels (height x width) one array read from a file may hold: about 1.07e9,
3.2 GB for 8-bit RGB. A flat image (JPEG, PNG, BMP, a stripped TIFF) whose header claims
more is refused before decoding; a region read larger than this is refused too, so a
slide is never decoded whole by accident. Raise it with ``open_image(path, max_pixels=...)``
(``None`` removes the limit)."""

STRIPE_BYTES = 16 * 2**20
"""Bytes of source pixels :meth:`ImageReader.resized` reads at a time when it streams."""

DECODE_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    SyntaxError,
    RuntimeError,
    IndexError,
    KeyError,
    struct.error,
    zlib.error,
)
"""What the decoding libraries raise on corrupt or truncated files; turned into :class:`ImageFormatError`."""


class ImageFormatError(ValueError):
    """A file that glmed cannot read as an image: unknown format, corrupt or truncated data.

    The message always starts with the file's name.
    """


class ImageTooLargeError(ImageFormatError):
    """An image (or a region of it) with more pixels than the reader's ``max_pixels``."""


@contextmanager
def decoding(name: str, what: str = "read") -> Iterator[None]:
    """Turn a decoding library's exception into an :class:`ImageFormatError` naming the file."""
    try:
        yield
    except ImageFormatError:
        raise
    except DECODE_ERRORS as error:
        raise ImageFormatError(f"{name}: cannot {what} it, the file is corrupt or truncated ({error})") from error


def check_pixels(name: str, size: Size, max_pixels: int | None, what: str = "the image") -> None:
    """Refuse ``size`` when it holds more than ``max_pixels`` pixels (decompression bombs, runaway reads)."""
    pixels = int(size[0]) * int(size[1])
    if max_pixels is not None and pixels > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {what} is {size[0]} x {size[1]} = {pixels} pixels, more than the limit of {max_pixels}; "
            "if the file is trusted, raise it with open_image(path, max_pixels=...) (None removes the limit)"
        )


class ImageReader(ABC):
    """A 2-D image, possibly multi-resolution, read by regions.

    Arrays returned are ``height x width x channels`` (channels last, as image files store
    them), in the file's own dtype (1-bit images come as uint8 0/255). Coordinates follow
    :mod:`glmed.conventions`. Every read returns a new array the caller owns (never a view of a
    cache), so it can be modified or handed to torch as is.
    """

    name: str = "<array>"
    """What to call this image in messages: usually its path."""

    max_pixels: int | None = DEFAULT_MAX_PIXELS
    """The most pixels one :meth:`read` may return (see :data:`DEFAULT_MAX_PIXELS`)."""

    @property
    @abstractmethod
    def size(self) -> Size:
        """``(height, width)`` at full resolution (level 0)."""

    @property
    @abstractmethod
    def channels(self) -> int:
        """Number of channels of every array this reader returns."""

    @property
    @abstractmethod
    def dtype(self) -> np.dtype:
        """The dtype of every array this reader returns."""

    @property
    def level_sizes(self) -> tuple[Size, ...]:
        """``(height, width)`` of each pyramid level, largest first."""
        return (self.size,)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of each level relative to level 0 (``(1.0,)`` if flat).

        The mean of the two axes' ratios, as OpenSlide defines it.
        """
        height, width = self.size
        return tuple((height / lh + width / lw) / 2 for lh, lw in self.level_sizes)

    def level_box(self, box: Box, level: int) -> Box:
        """Where a level-0 box lies on ``level``'s pixel grid: rounded, clamped, never empty.

        This is the region :meth:`read` returns, so its size is the shape of the result.
        """
        self._check_level(level)
        if level == 0:
            r0, c0, r1, c1 = box
            return (int(r0), int(c0), int(r1), int(c1))
        return footprint(box, self.size, self.level_sizes[level])

    def read(self, box: Box, level: int = 0) -> np.ndarray:
        """Read a region given in level-0 pixels, returned at ``level``'s resolution.

        The box must lie inside the image. Only the region is decoded where the format
        allows it (tiled TIFFs, slides); flat formats are decoded once and sliced.

        Returns:
            ``h x w x channels`` array, ``(h, w)`` the size of :meth:`level_box`.
        """
        self._check_level(level)
        check_box(box, self.size, self.name)
        region = self.level_box(box, level)
        check_pixels(self.name, (region[2] - region[0], region[3] - region[1]), self.max_pixels, "the region asked for")
        return self._read_level(level, region)

    @abstractmethod
    def _read_level(self, level: int, box: Box) -> np.ndarray:
        """Read ``box``, given in ``level``'s own pixels and already checked, as ``h x w x C``."""

    def resized(self, size: Size) -> np.ndarray:
        """The whole image resampled to ``size`` (the global branch's view), in the reader's dtype.

        Reads the coarsest pyramid level still at least ``size``. When that level is at
        least twice ``size`` along an axis, it is streamed in stripes of about
        :data:`STRIPE_BYTES` and averaged over blocks of ``factor`` or ``factor + 1``
        pixels (``factor`` the integer part of the ratio) down to less than twice ``size``,
        so memory stays near ``4 x size`` pixels whatever the image's size; the remaining
        factor (< 2) is an anti-aliased resize.
        """
        height, width = (int(size[0]), int(size[1]))
        if height < 1 or width < 1:
            raise ValueError(f"{self.name}: resized size must be positive, got {tuple(size)}")
        level = self.best_level_for((height, width))
        lh, lw = self.level_sizes[level]
        if lh < 2 * height and lw < 2 * width:
            check_pixels(self.name, (lh, lw), self.max_pixels, f"level {level}")
            small = self._read_level(level, (0, 0, lh, lw))
        else:
            small = self._block_mean(level, (lh // max(1, lh // height), lw // max(1, lw // width)))
        return resize_image(small, (height, width))

    def sampled(self, size: Size) -> np.ndarray:
        """The whole image at ``size`` by nearest neighbour at each output pixel's centre (labels).

        Reads the coarsest pyramid level still at least ``size``; values are never mixed, so
        a class map stays a class map.
        """
        height, width = (int(size[0]), int(size[1]))
        if height < 1 or width < 1:
            raise ValueError(f"{self.name}: sampled size must be positive, got {tuple(size)}")
        level = self.best_level_for((height, width))
        pixels = self.read((0, 0, *self.size), level=level)
        rows = ((2 * np.arange(height) + 1) * pixels.shape[0]) // (2 * height)
        cols = ((2 * np.arange(width) + 1) * pixels.shape[1]) // (2 * width)
        return pixels[rows[:, None], cols[None, :]]

    def crop(self, box: Box) -> ImageReader:
        """The box as an image of its own (:class:`glmed.io.region.RegionReader`), read lazily."""
        from glmed.io.region import RegionReader

        return RegionReader(self, box)

    def _block_mean(self, level: int, size: Size) -> np.ndarray:
        """``level`` averaged down to ``size`` over blocks with whole-pixel edges, read in stripes of rows."""
        lh, lw = self.level_sizes[level]
        row_edges = (np.arange(size[0] + 1) * lh) // size[0]
        col_starts = (np.arange(size[1]) * lw) // size[1]
        col_counts = np.diff(np.append(col_starts, lw))
        block_bytes = (lh // size[0] + 1) * lw * self.channels * self.dtype.itemsize
        blocks_per_stripe = max(1, STRIPE_BYTES // block_bytes)
        out = np.empty((size[0], size[1], self.channels), dtype=self.dtype)
        for first in range(0, size[0], blocks_per_stripe):
            last = min(first + blocks_per_stripe, size[0])
            top, bottom = int(row_edges[first]), int(row_edges[last])
            stripe = self._read_level(level, (top, 0, bottom, lw))
            # Row sums one block at a time: a reduction with a dtype casts in small buffers,
            # where reduceat would first cast the whole stripe to float64 (8x its bytes).
            edges = row_edges[first : last + 1] - top
            rows = [stripe[a:b].sum(axis=0, dtype=np.float64) for a, b in zip(edges[:-1], edges[1:], strict=True)]
            sums = np.add.reduceat(np.stack(rows), col_starts, axis=1)
            counts = np.diff(row_edges[first : last + 1])[:, None, None] * col_counts[None, :, None]
            out[first:last] = _cast_like(sums / counts, self.dtype)
        return out

    def best_level_for(self, size: Size) -> int:
        """The coarsest level whose size is still at least ``size`` on both axes."""
        best = 0
        for index, (lh, lw) in enumerate(self.level_sizes):
            if lh >= size[0] and lw >= size[1]:
                best = index
        return best

    def close(self) -> None:  # noqa: B027 - a hook with a default: readers that hold nothing need not override it
        """Release file handles and caches; a closed reader must not be used again."""

    def _check_level(self, level: int) -> None:
        count = len(self.level_sizes)
        if not (isinstance(level, (int, np.integer)) and 0 <= level < count):
            raise ValueError(f"{self.name}: level {level!r} does not exist, the image has levels 0..{count - 1}")

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, size={self.size}, channels={self.channels}, "
            f"levels={len(self.level_sizes)})"
        )


class DecodedReader(ImageReader):
    """A flat image decoded whole, once, on its first read, then copied from by region (thread-safe).

    The header's size is checked against ``max_pixels`` before anything is decoded.
    Subclasses pass the header's size, channels and dtype and implement :meth:`_decode`.
    """

    def __init__(self, name: str, size: Size, channels: int, dtype: DTypeLike, max_pixels: int | None) -> None:
        self.name = name
        self.max_pixels = max_pixels
        self._size = (int(size[0]), int(size[1]))
        self._channels = int(channels)
        self._dtype = np.dtype(dtype)
        self._pixels: np.ndarray | None = None
        self._lock = threading.Lock()
        if self._size[0] < 1 or self._size[1] < 1:
            raise ImageFormatError(f"{name}: the image is empty (size {self._size})")
        check_pixels(name, self._size, max_pixels)

    @property
    def size(self) -> Size:
        """``(height, width)`` from the header, known before anything is decoded."""
        return self._size

    @property
    def channels(self) -> int:
        """Channels from the header; the decoded array is checked against it."""
        return self._channels

    @property
    def dtype(self) -> np.dtype:
        """Dtype from the header; the decoded array is checked against it."""
        return self._dtype

    @abstractmethod
    def _decode(self) -> np.ndarray:
        """The whole image as ``H x W x C`` matching the header; library errors may escape."""

    def pixels(self) -> np.ndarray:
        """The whole decoded image (read-only), decoding it on the first call."""
        with self._lock:
            if self._pixels is None:
                with decoding(self.name, "decode"):
                    array = self._decode()
                expected = self._size + (self._channels,)
                if array.shape != expected or array.dtype != self._dtype:
                    raise ImageFormatError(
                        f"{self.name}: decoded to {array.shape} {array.dtype} "
                        f"but its header says {expected} {self._dtype}"
                    )
                array = array.view()
                array.flags.writeable = False
                self._pixels = array
            return self._pixels

    def _read_level(self, level: int, box: Box) -> np.ndarray:
        r0, c0, r1, c1 = box
        return self.pixels()[r0:r1, c0:c1].copy()

    def close(self) -> None:
        """Drop the decoded pixels so their memory can be freed."""
        self._pixels = None


class ArrayReader(DecodedReader):
    """An in-memory ``H x W`` or ``H x W x C`` array as an :class:`ImageReader` (reads are copies)."""

    def __init__(self, array: np.ndarray, name: str = "<array>") -> None:
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"{name}: expected an image of shape H x W or H x W x C, got {array.shape}")
        super().__init__(name, array.shape[:2], array.shape[2], array.dtype, max_pixels=None)
        self._array = array

    def _decode(self) -> np.ndarray:
        return self._array


def check_box(box: Sequence[int], size: Size, name: str) -> None:
    """Raise a ValueError naming the image if ``box`` is empty or leaves the image."""
    if len(box) != 4:
        raise ValueError(f"{name}: a box is (row0, col0, row1, col1), got {tuple(box)}")
    r0, c0, r1, c1 = (int(v) for v in box)
    if not (0 <= r0 < r1 <= size[0] and 0 <= c0 < c1 <= size[1]):
        raise ValueError(f"{name}: box {tuple(box)} is empty or outside the image of size {size}")


def bilevel_to_uint8(array: np.ndarray) -> np.ndarray:
    """A 1-bit (bool) image as uint8 0/255, as the ISIC scorer reads them; other arrays unchanged."""
    return array.astype(np.uint8) * np.uint8(255) if array.dtype == bool else array


def resize_image(array: np.ndarray, size: Size) -> np.ndarray:
    """Resample an ``H x W x C`` image to ``size`` with area averaging (anti-aliased), keeping its dtype."""
    import torch
    import torch.nn.functional as F

    if tuple(array.shape[:2]) == tuple(size):
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(tensor, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return _cast_like(out[0].permute(1, 2, 0).numpy(), array.dtype)


def _cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float values as ``dtype``: rounded and clipped to its range when it is an integer type."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype)
