"""TIFF through tifffile: plain (stripped), tiled, pyramidal and BigTIFF, read by regions.

A region read decodes only the tiles (or strips) it overlaps: their byte ranges are read
from the file and decoded one by one with tifffile's own segment decoder, so a 2048 x 2048
crop of a 100k x 100k slide costs a few dozen tiles, never a whole level (the trap in
MONAI's ``WSIReader(backend="tifffile")``, which decodes a level per patch).

Pyramid levels are found where writers put them: as tifffile's levels of the first series
(reduced-resolution pages in the main page chain, or SubIFDs), or failing that as the
other tiled pages of the file whose size is level 0's scaled by one factor on both axes.
Values are returned as stored: palette images as indices, 1-bit as uint8 0/255, no
inversion of MinIsWhite.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, cast

import numpy as np

from glmed.conventions import Box, Size
from glmed.io.base import (
    DEFAULT_MAX_PIXELS,
    ImageFormatError,
    ImageReader,
    bilevel_to_uint8,
    check_pixels,
    decoding,
)

if TYPE_CHECKING:
    from tifffile import TiffFile, TiffPage


class TiffReader(ImageReader):
    """A TIFF or BigTIFF file (any layout tifffile reads); only the first image series is used."""

    def __init__(self, path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        import tifffile

        self.path = self.name = os.fspath(path)
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        with decoding(self.path, "open"):
            self._tiff = tifffile.TiffFile(self.path)
        try:
            with decoding(self.path, "open"):
                self._pages = _level_pages(self._tiff, self.path)
            self._check_pages()
        except BaseException:
            self._tiff.close()
            raise

    def _check_pages(self) -> None:
        base = self._pages[0]
        if base.dtype is None:
            raise ImageFormatError(f"{self.path}: {base.bitspersample}-bit samples are not supported")
        if base.imagedepth > 1:
            raise ImageFormatError(f"{self.path}: holds a volume of depth {base.imagedepth}; glmed reads 2-D images")
        file_size = self._tiff.filehandle.size
        for level, page in enumerate(self._pages):
            check_pixels(self.path, _segment_shape(page), self.max_pixels, f"one tile or strip of level {level}")
            # Two separate tags that a corrupt file may give different lengths: check the pairs there are.
            pairs = zip(page.dataoffsets, page.databytecounts, strict=False)
            ends = [offset + count for offset, count in pairs if count > 0]
            if ends and max(ends) > file_size:
                raise ImageFormatError(
                    f"{self.path}: the file is truncated, level {level}'s data ends at byte {max(ends)} "
                    f"but the file has {file_size} bytes"
                )

    @property
    def size(self) -> Size:
        """``(height, width)`` of the first series' full-resolution page."""
        return self.level_sizes[0]

    @property
    def channels(self) -> int:
        """Samples per pixel of the full-resolution page (every level has the same)."""
        return int(self._pages[0].samplesperpixel)

    @property
    def dtype(self) -> np.dtype:
        """The stored sample type, with 1-bit images reported as uint8 (they are read as 0/255)."""
        dtype = np.dtype(self._pages[0].dtype)
        return np.dtype(np.uint8) if dtype == np.bool_ else dtype

    @property
    def level_sizes(self) -> tuple[Size, ...]:
        """``(height, width)`` of each level's page, largest first."""
        return tuple((int(page.imagelength), int(page.imagewidth)) for page in self._pages)

    def _read_level(self, level: int, box: Box) -> np.ndarray:
        page = self._pages[level]
        r0, c0, r1, c1 = box
        seg_h, seg_w = _segment_shape(page)
        per_row = -(-int(page.imagewidth) // seg_w)
        per_plane = per_row * -(-int(page.imagelength) // seg_h)
        planes = int(page.samplesperpixel) if page.planarconfig == 2 else 1
        indices = [
            plane * per_plane + row * per_row + col
            for plane in range(planes)
            for row in range(r0 // seg_h, (r1 - 1) // seg_h + 1)
            for col in range(c0 // seg_w, (c1 - 1) // seg_w + 1)
        ]
        out = np.zeros((r1 - r0, c1 - c0, self.channels), dtype=page.dtype)
        offsets = [page.dataoffsets[i] for i in indices]
        counts = [page.databytecounts[i] for i in indices]
        with self._lock, decoding(self.path, f"decode level {level} of"):
            for data, index in self._tiff.filehandle.read_segments(offsets, counts, indices):
                segment, (plane, _, top, left, _), _ = page.decode(data, index, jpegtables=page.jpegtables)
                if segment is not None:  # a sparse (never written) tile stays zero
                    _paste(out, segment[0], top - r0, left - c0, plane if planes > 1 else 0)
        return bilevel_to_uint8(out)

    def close(self) -> None:
        """Close the TIFF file handle."""
        self._tiff.close()


def _segment_shape(page: TiffPage) -> Size:
    """``(height, width)`` of one tile, or of one strip (full width) for a stripped page."""
    if page.is_tiled:
        return (int(page.tilelength), int(page.tilewidth))
    return (min(int(page.rowsperstrip) or int(page.imagelength), int(page.imagelength)), int(page.imagewidth))


def _paste(out: np.ndarray, segment: np.ndarray, top: int, left: int, channel: int) -> None:
    """Copy the part of a decoded ``h x w x s`` segment that overlaps ``out``.

    ``(top, left)`` is where the segment's corner lies relative to ``out``'s.
    """
    rows = slice(max(top, 0), min(top + segment.shape[0], out.shape[0]))
    cols = slice(max(left, 0), min(left + segment.shape[1], out.shape[1]))
    out[rows, cols, channel : channel + segment.shape[2]] = segment[
        rows.start - top : rows.stop - top, cols.start - left : cols.stop - left
    ]


def _level_pages(tiff: TiffFile, path: str) -> list[TiffPage]:
    """The page of each pyramid level, largest first."""
    if not tiff.series:
        raise ImageFormatError(f"{path}: the TIFF holds no image")
    series = tiff.series[0]
    if len(series.pages) > 1:
        raise ImageFormatError(
            f"{path}: the first image series is a stack of {len(series.pages)} images (axes {series.axes}); "
            "glmed reads 2-D images"
        )
    pages = [level.keyframe for level in series.levels]
    if len(pages) == 1:
        pages += _chain_levels(tiff, pages[0])
    return pages


def _chain_levels(tiff: TiffFile, base: TiffPage) -> list[TiffPage]:
    """Other tiled pages of the main chain that look like reduced levels of ``base``.

    Same samples and dtype, smaller on both axes, and scaled by one factor (within a
    pixel of rounding), which leaves out slide labels and macro photographs.
    """
    height, width = int(base.imagelength), int(base.imagewidth)
    found: dict[Size, TiffPage] = {}
    # The main chain comes as TiffPage objects, whose tags (tiling, samples, size) are read below.
    for page in cast("list[TiffPage]", tiff.pages[1:]):
        if not (page.is_tiled and page.samplesperpixel == base.samplesperpixel and page.dtype == base.dtype):
            continue
        lh, lw = int(page.imagelength), int(page.imagewidth)
        if lh < height and lw < width and abs(lh * width - lw * height) <= height + width:
            found.setdefault((lh, lw), page)
    return [found[size] for size in sorted(found, reverse=True)]
