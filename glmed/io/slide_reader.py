"""Whole-slide images through OpenSlide (SVS, NDPI, MRXS, SCN, BIF, VMS, generic tiled TIFF, DICOM WSI).

The only module that speaks OpenSlide's ``(x, y)`` / ``(width, height)``; everything it
returns is in glmed's ``(row, col)`` convention. OpenSlide hands back RGBA; transparent
pixels (outside the scanned area) are composited over the slide's background colour
(white unless the slide says otherwise), opaque ones are unchanged.

A read at level ``k`` starts at the level-0 position of the level box's corner
(``round(corner * downsample)``). Where a level's downsample is an integer (power-of-two
pyramids) this lands exactly on the level's pixel grid and reads are pixel-exact; where it
is not (e.g. a level of ``ceil(4499 / 2)`` rows), OpenSlide resamples at a sub-pixel offset.
The tifffile reader is exact in both cases. After any read error OpenSlide refuses further
reads of that slide: open it again.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from glmed.conventions import Box, Size
from glmed.io.base import DEFAULT_MAX_PIXELS, ImageFormatError, ImageReader
from glmed.io.convert import flatten_alpha

if TYPE_CHECKING:
    from openslide import OpenSlide


def _openslide() -> ModuleType:
    try:
        import openslide
    except ImportError as error:  # the wheel or its native library is missing
        raise ImportError(
            "reading whole-slide formats needs OpenSlide: pip install openslide-python openslide-bin "
            f"(or glmed[wsi]); importing it failed with: {error}"
        ) from error
    return openslide


class SlideReader(ImageReader):
    """A slide opened with OpenSlide; always 3-channel uint8."""

    def __init__(self, path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        openslide = _openslide()
        self.path = self.name = os.fspath(path)
        self.max_pixels = max_pixels
        self._errors = (openslide.OpenSlideError,)
        try:
            self._slide: OpenSlide = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as error:
            raise ImageFormatError(f"{self.path}: not a slide format OpenSlide reads") from error
        except (openslide.OpenSlideError, OSError) as error:
            message = f"{self.path}: OpenSlide cannot open it, the file is corrupt or truncated ({error})"
            raise ImageFormatError(message) from error
        colour = self._slide.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "FFFFFF")
        self._background = tuple(int(colour[i : i + 2], 16) for i in (0, 2, 4))

    @property
    def size(self) -> Size:
        """``(height, width)`` of level 0."""
        return self.level_sizes[0]

    @property
    def channels(self) -> int:
        """Always 3: OpenSlide's RGBA is composited over the background colour to RGB."""
        return 3

    @property
    def dtype(self) -> np.dtype:
        """Always uint8, the only sample type OpenSlide returns."""
        return np.dtype(np.uint8)

    @property
    def level_sizes(self) -> tuple[Size, ...]:
        """OpenSlide's level dimensions, turned from ``(width, height)`` into ``(height, width)``."""
        return tuple((int(h), int(w)) for w, h in self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """OpenSlide's own downsample factors, which reads at ``level`` use to place the region."""
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def properties(self) -> dict:
        """The slide's metadata (vendor, microns per pixel, objective power...), as OpenSlide names it."""
        return dict(self._slide.properties)

    def _read_level(self, level: int, box: Box) -> np.ndarray:
        r0, c0, r1, c1 = box
        downsample = self._slide.level_downsamples[level]
        location = (int(round(c0 * downsample)), int(round(r0 * downsample)))
        try:
            region = self._slide.read_region(location, level, (c1 - c0, r1 - r0))
        except self._errors as error:
            raise ImageFormatError(
                f"{self.path}: OpenSlide cannot read level {level}, the file is corrupt ({error})"
            ) from error
        return flatten_alpha(np.asarray(region), self._background)

    def close(self) -> None:
        """Close the slide in OpenSlide; it refuses reads after this."""
        self._slide.close()
