"""A slide seen at a chosen physical resolution (µm per pixel) instead of its level 0's.

A model trained on 0.5 µm/px tiles applied to a 0.25 µm/px (40x) scan sees every cell twice as
large. :class:`ResampledReader` presents a slide at a target µm/px: its size is the slide's
level-0 extent at that resolution, and each region is read from the **source level**, the
coarsest pyramid level that is not coarser than the target (within :data:`LEVEL_TOLERANCE`), then
resampled to the target. A 40x slide asked for at 0.5 µm/px is read from its 20x level when it
has one, else from level 0 and halved; never from a coarser level and blown up.

Resampling is separable and exact in position: working pixel ``r``'s centre lies at
``(r + 0.5) * f - 0.5`` source pixels (``f`` source pixels per working pixel, per axis), and its
value is a triangle-filter average over the source pixels within ``max(f, 1)`` of it (bilinear
when enlarging, anti-aliased when shrinking). Every pixel depends only on its own position, so
patches read one by one tile seamlessly. Where the target is a level's own resolution (the
working size is that level's size) pixels are read as they are.

The whole-image views (:meth:`ResampledReader.resized`, :meth:`ResampledReader.sampled`) are the
slide's own: the same extent at another size, from its coarsest sufficient level.
"""

from __future__ import annotations

import math

import numpy as np

from glmed.conventions import Box, Size
from glmed.io.base import ImageReader, _cast_like

CHUNK_BYTES = 32 << 20
"""Bytes of float32 rows one resampling step holds (a large region is resampled in row chunks)."""

LEVEL_TOLERANCE = 0.01
"""A level up to 1% coarser than the target still counts as fine enough (pyramid sizes are rounded)."""


class ResampledReader(ImageReader):
    """``reader`` at ``target`` µm per pixel, as an :class:`ImageReader` with its own coordinates.

    Args:
        reader: the slide; it stays open and owned by the caller.
        target: µm per pixel of this view (the same on both axes).
        source_mpp: ``(rows, cols)`` µm per level-0 pixel of ``reader``
            (:func:`glmed.io.resolution.microns_per_pixel`).

    Attributes:
        source_level: the level of ``reader`` that working-resolution reads come from.

    Raises:
        ValueError: a target or source µm/px that is not a positive finite number.
    """

    def __init__(self, reader: ImageReader, target: float, source_mpp: tuple[float, float]) -> None:
        if not (isinstance(target, (int, float)) and math.isfinite(target) and target > 0):
            raise ValueError(f"{reader.name}: the target µm/px must be a positive number, got {target!r}")
        if not all(math.isfinite(v) and v > 0 for v in source_mpp):
            raise ValueError(f"{reader.name}: the slide's µm/px must be positive, got {source_mpp!r}")
        self.reader = reader
        self.target = float(target)
        self.source_mpp = (float(source_mpp[0]), float(source_mpp[1]))
        self.name = reader.name
        self.max_pixels = reader.max_pixels
        height, width = reader.size
        self._size = (max(1, round(height * self.source_mpp[0] / self.target)),
                      max(1, round(width * self.source_mpp[1] / self.target)))
        self.source_level = source_level(reader, self.target, self.source_mpp)
        # Coarser levels of the slide, smaller than this view, serve as this view's own pyramid.
        smaller = [index for index, (lh, lw) in enumerate(reader.level_sizes)
                   if index > self.source_level and lh <= self._size[0] and lw <= self._size[1]]
        self._levels = (self.source_level, *smaller)

    @property
    def size(self) -> Size:
        """``(height, width)`` of the slide's level-0 extent at the target µm/px."""
        return self._size

    @property
    def channels(self) -> int:
        """The slide's channels."""
        return self.reader.channels

    @property
    def dtype(self) -> np.dtype:
        """The slide's dtype (resampled values are rounded back to it)."""
        return self.reader.dtype

    @property
    def level_sizes(self) -> tuple[Size, ...]:
        """This view's size, then the slide's levels coarser than it (read as they are)."""
        return (self._size, *(self.reader.level_sizes[index] for index in self._levels[1:]))

    @property
    def mpp(self) -> tuple[float, float]:
        """``(rows, cols)`` µm per pixel of this view, exactly: the slide's extent over this view's size."""
        height, width = self.reader.size
        return (height * self.source_mpp[0] / self._size[0], width * self.source_mpp[1] / self._size[1])

    @property
    def scale(self) -> tuple[float, float]:
        """``(rows, cols)`` slide level-0 pixels per pixel of this view."""
        height, width = self.reader.size
        return (height / self._size[0], width / self._size[1])

    def resized(self, size: Size) -> np.ndarray:
        """The slide's own downsampled view (same extent), from its coarsest sufficient level."""
        return self.reader.resized(size)

    def sampled(self, size: Size) -> np.ndarray:
        """The slide's own nearest-neighbour view (same extent)."""
        return self.reader.sampled(size)

    def _read_level(self, level: int, box: Box) -> np.ndarray:
        source = self._levels[level]
        if level > 0 or self.reader.level_sizes[source] == self._size:
            return self.reader._read_level(source, box)
        lh, lw = self.reader.level_sizes[source]
        r0, c0, r1, c1 = box
        row_lo, row_index, row_weights = _taps(r0, r1, lh / self._size[0], lh)
        col_lo, col_index, col_weights = _taps(c0, c1, lw / self._size[1], lw)
        row_hi, col_hi = row_lo + int(row_index.max()) + 1, col_lo + int(col_index.max()) + 1
        pixels = self.reader._read_level(source, (row_lo, col_lo, row_hi, col_hi))
        out = np.empty((r1 - r0, c1 - c0, pixels.shape[2]), dtype=self.dtype)
        # Output rows a chunk at a time, so the float32 taps of a large region (a streamed view) stay small.
        per_row = pixels.shape[1] * pixels.shape[2] * 4
        step = max(1, CHUNK_BYTES // per_row)
        for first in range(0, r1 - r0, step):
            chunk = slice(first, first + step)
            rows = _weighted_sum(pixels, row_index[chunk], row_weights[chunk], axis=0)
            out[chunk] = _cast_like(_weighted_sum(rows, col_index, col_weights, axis=1), self.dtype)
        return out


def source_level(reader: ImageReader, target: float, source_mpp: tuple[float, float]) -> int:
    """The coarsest level of ``reader`` whose µm/px is at most ``target`` (within :data:`LEVEL_TOLERANCE`); else 0."""
    mean = (source_mpp[0] + source_mpp[1]) / 2
    best = 0
    for index, downsample in enumerate(reader.level_downsamples):
        if mean * downsample <= target * (1 + LEVEL_TOLERANCE):
            best = index
    return best


def _taps(start: int, stop: int, factor: float, length: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Triangle-filter taps of output pixels ``[start, stop)`` on a source axis of ``length`` pixels.

    ``factor`` is source pixels per output pixel. Returns the first source pixel read, each output
    pixel's source indices relative to it (``n × k``) and their weights (``n × k``, rows summing to 1).
    """
    support = max(factor, 1.0)
    centres = (np.arange(start, stop, dtype=np.float64) + 0.5) * factor - 0.5
    taps = int(math.ceil(2 * support)) + 1
    first = np.floor(centres - support).astype(np.int64) + 1
    index = first[:, None] + np.arange(taps)[None, :]
    weights = np.clip(1 - np.abs(index - centres[:, None]) / support, 0, None)
    index = np.clip(index, 0, length - 1)  # beyond an edge, the edge pixel stands in
    weights /= weights.sum(axis=1, keepdims=True)
    low = int(index.min())
    return low, index - low, weights.astype(np.float32)


def _weighted_sum(values: np.ndarray, index: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """``sum_k weights[:, k] * values.take(index[:, k], axis)`` in float32, one tap at a time (no ``n × k`` copy)."""
    shape = [1] * values.ndim
    shape[axis] = -1
    total = np.zeros(0, dtype=np.float32)
    for tap in range(index.shape[1]):
        term = values.take(index[:, tap], axis=axis).astype(np.float32)
        term *= weights[:, tap].reshape(shape)
        total = term if tap == 0 else np.add(total, term, out=total)
    return total
