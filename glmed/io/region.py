"""A region of an image seen as an image of its own (coarse-to-fine's refinement box).

Reads are forwarded to the underlying reader with the region's offset added, so nothing
outside the region is ever read, and (through :meth:`ImageReader.resized`) a slide
region's downsampled view comes from the coarsest pyramid level still fine enough.
"""

from __future__ import annotations

import numpy as np

from glmed.conventions import Box, Size
from glmed.geometry import footprint
from glmed.io.base import ImageReader, check_box


class RegionReader(ImageReader):
    """The box ``region`` of ``reader`` as an :class:`ImageReader` with its own coordinates.

    Args:
        reader: the whole image.
        region: ``(row0, col0, row1, col1)`` in the whole image's level-0 pixels.
    """

    def __init__(self, reader: ImageReader, region: Box) -> None:
        check_box(region, reader.size, reader.name)
        self.reader = reader
        r0, c0, r1, c1 = (int(v) for v in region)
        self.region: Box = (r0, c0, r1, c1)
        self.max_pixels = reader.max_pixels
        self.name = f"{reader.name}[{self.region[0]}:{self.region[2]}, {self.region[1]}:{self.region[3]}]"
        # The region's place on each of the reader's levels; level 0 is the region itself.
        self._level_regions = tuple(
            footprint(self.region, reader.size, level_size) if index else self.region
            for index, level_size in enumerate(reader.level_sizes)
        )

    @property
    def size(self) -> Size:
        """``(height, width)`` of the region at full resolution."""
        r0, c0, r1, c1 = self.region
        return (r1 - r0, c1 - c0)

    @property
    def channels(self) -> int:
        """The underlying reader's channels: a region is read as is."""
        return self.reader.channels

    @property
    def dtype(self) -> np.dtype:
        """The underlying reader's dtype: a region is read as is."""
        return self.reader.dtype

    @property
    def level_sizes(self) -> tuple[Size, ...]:
        """The region's footprint on each of the reader's levels, so its pyramid is the reader's."""
        return tuple((r1 - r0, c1 - c0) for r0, c0, r1, c1 in self._level_regions)

    def _read_level(self, level: int, box: Box) -> np.ndarray:
        r0, c0 = self._level_regions[level][:2]
        return self.reader._read_level(level, (box[0] + r0, box[1] + c0, box[2] + r0, box[3] + c0))
