"""A region of an image seen as an image of its own (coarse-to-fine's refinement box).

Reads are forwarded to the underlying reader with the region's offset added, so nothing
outside the region is ever read, and (through :meth:`ImageReader.resized`) a slide
region's downsampled view comes from the coarsest pyramid level still fine enough.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from glmed.io.base import ImageReader, check_box
from glmed.types import Box, Size


class RegionReader(ImageReader):
    """The box ``region`` of ``reader`` as an :class:`ImageReader` with its own coordinates.

    Args:
        reader: the whole image.
        region: ``(row0, col0, row1, col1)`` in the whole image's level-0 pixels.
    """

    def __init__(self, reader: ImageReader, region: Box) -> None:
        check_box(region, reader.size, reader.name)
        self.reader = reader
        self.region: Box = tuple(int(v) for v in region)  # type: ignore[assignment]
        self.name = f"{reader.name}[{self.region[0]}:{self.region[2]}, {self.region[1]}:{self.region[3]}]"

    @property
    def size(self) -> Size:
        r0, c0, r1, c1 = self.region
        return (r1 - r0, c1 - c0)

    @property
    def channels(self) -> int:
        return self.reader.channels

    @property
    def level_downsamples(self) -> Tuple[float, ...]:
        return self.reader.level_downsamples

    @property
    def level_sizes(self) -> Tuple[Size, ...]:
        height, width = self.size
        return tuple((max(int(height / d), 1), max(int(width / d), 1)) for d in self.level_downsamples)

    def read(self, box: Box, level: int = 0) -> np.ndarray:
        check_box(box, self.size, self.name)
        r0, c0 = self.region[0], self.region[1]
        return self.reader.read((box[0] + r0, box[1] + c0, box[2] + r0, box[3] + c0), level)
