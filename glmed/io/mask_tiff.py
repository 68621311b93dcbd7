"""Class-index masks stored as pyramidal TIFFs that slide viewers show, and that say what they hold.

A mask of class indices stored as is shows as a black square in any viewer (0 and 1 of 255).
:func:`write_mask_tiff` stores it so that it is seen, and so that a reader knows what it sees:

- **two classes**: 0 and 255, greyscale: background black, foreground white. glmed's readers of
  binary masks (:func:`glmed.io.labels.binary_to_index`, :func:`glmed.io.geojson.mask_to_geojson`)
  read 255 as class 1, as they read ISIC's 0/255 PNGs.
- **3 to 256 classes**: the class indices themselves with a TIFF colour map (photometric
  palette): viewers show class ``c`` in :func:`~glmed.io.geojson.class_colour` ``(c)`` (the
  colours the GeoJSON export gives QuPath), background black; tifffile and glmed read the indices.
- **more classes**: 16-bit class indices, greyscale (a colour map of 65536 entries helps nobody).

Level 0's ImageDescription is JSON, ``{"glmed_mask": {...}}`` (:func:`read_mask_metadata`):
``classes`` (names by class index), ``values`` (stored value → class name), ``level0_size``
``[height, width]`` and ``mpp`` ``[rows, cols]`` µm per pixel (or null) of the mask's own level 0,
``slide_size`` and ``slide_mpp``, the same of the slide's level 0, ``source`` (the slide's file
name) and ``software``. A mask made at the slide's own resolution has the slide's size and µm/px;
one made at another (``predict_to_tiff(..., mpp=0.5)`` on a 40x slide) covers the same extent in
fewer pixels: the slide's level-0 pixel ``(r, c)`` is the mask's
``(r * level0_size / slide_size)``. With a µm/px, every level's TIFF resolution tags carry the
mask's (pixels per centimetre, scaled by the level's downsample), which viewers use for their
scale bar and :func:`glmed.io.resolution.microns_per_pixel` reads back.

:func:`write_probability_tiff` stores how sure a mask is, 0 to 255, beside it, with the same
sizes and resolution.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from glmed.io.geojson import class_colour
from glmed.io.writers import write_pyramidal_tiff

METADATA_KEY = "glmed_mask"
"""The key of the mask's metadata in its ImageDescription JSON."""

MAX_PALETTE_CLASSES = 256
"""Up to this many classes are stored as 8-bit indices with a colour map."""


@dataclass(frozen=True)
class MaskEncoding:
    """How a model's class indices are stored in its mask TIFF.

    Attributes:
        classes: a name per class index, background first.
        lookup: ``stored = lookup[index]`` for every index of the mask's dtype, or None to store indices as they are.
        colormap: the TIFF colour map (``3 x 256`` uint16) or None for greyscale.
    """

    classes: tuple[str, ...]
    lookup: np.ndarray | None
    colormap: np.ndarray | None

    @property
    def values(self) -> dict[int, str]:
        """Stored pixel value → class name."""
        if self.lookup is None:
            return dict(enumerate(self.classes))
        return {int(self.lookup[index]): name for index, name in enumerate(self.classes)}

    def to_index(self, stored: np.ndarray) -> np.ndarray:
        """Stored values (as read from the file) back to class indices."""
        stored = np.asarray(stored)
        if self.lookup is None:
            return stored
        inverse = np.zeros(int(self.lookup.max()) + 1, dtype=np.uint8)
        inverse[self.lookup[: len(self.classes)]] = np.arange(len(self.classes), dtype=np.uint8)
        return inverse[stored]


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """``("background", "foreground")`` for two classes, else ``("background", "class 1", ...)``."""
    if num_classes == 2:
        return ("background", "foreground")
    return ("background",) + tuple(f"class {index}" for index in range(1, num_classes))


def mask_encoding(num_classes: int, classes: Sequence[str] | None = None) -> MaskEncoding:
    """The encoding of a ``num_classes`` mask (see the module docstring).

    Args:
        num_classes: classes of the model, background included (at least 2).
        classes: a name per class, background first; :func:`default_class_names` by default.

    Raises:
        ValueError: a class count below 2, or names that are not one non-empty string per class.
    """
    if num_classes < 2:
        raise ValueError(f"a mask has at least 2 classes (background included), got {num_classes}")
    names = default_class_names(num_classes) if classes is None else tuple(classes)
    if isinstance(classes, str) or len(names) != num_classes or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"class names: one non-empty name per class, background first, {num_classes} in all; "
                         f"got {classes!r}")
    if num_classes == 2:
        lookup = np.zeros(256, dtype=np.uint8)
        lookup[1] = 255
        return MaskEncoding(names, lookup, None)
    if num_classes > MAX_PALETTE_CLASSES:
        return MaskEncoding(names, None, None)
    colormap = np.zeros((3, 256), dtype=np.uint16)
    for index in range(1, num_classes):
        colormap[:, index] = np.asarray(class_colour(index), dtype=np.uint16) * 257  # 8-bit to 16-bit: 255 → 65535
    return MaskEncoding(names, None, colormap)


def write_mask_tiff(
    path: str | os.PathLike,
    mask: np.ndarray,
    encoding: MaskEncoding,
    *,
    mpp: tuple[float, float] | None = None,
    source: str | None = None,
    slide_size: tuple[int, int] | None = None,
    slide_mpp: tuple[float, float] | None = None,
    tile: int = 512,
    compression: str | None = "zlib",
    progress: bool = False,
) -> None:
    """Write an ``H x W`` class-index mask as a pyramidal TIFF a viewer shows, atomically.

    Levels halve by nearest neighbour; tiles are encoded one at a time, so a memory-mapped mask
    larger than memory streams to disk.

    Args:
        path: the ``.tif`` to write.
        mask: class indices (uint8, or uint16 for more than 256 classes); a :class:`numpy.memmap` is fine.
        encoding: from :func:`mask_encoding`.
        mpp: ``(rows, cols)`` µm per pixel of the mask (level 0), or None when unknown.
        source: the slide's name, recorded in the metadata.
        slide_size: ``(height, width)`` of the slide's level 0; the mask's own size by default.
        slide_mpp: ``(rows, cols)`` µm per level-0 pixel of the slide; ``mpp`` by default (a mask
            at the slide's resolution).
        tile: tile side, a multiple of 16.
        compression: ``"zlib"``, ``"lzw"`` or None (lossless only: the values are classes).
        progress: a progress bar over the tiles.
    """
    from glmed import __version__

    metadata = {
        "classes": list(encoding.classes),
        "values": {str(value): name for value, name in encoding.values.items()},
        "level0_size": [int(mask.shape[0]), int(mask.shape[1])],
        "mpp": _pair_or_none(mpp),
        "slide_size": [int(v) for v in (mask.shape[:2] if slide_size is None else slide_size)],
        "slide_mpp": _pair_or_none(mpp if slide_size is None and slide_mpp is None else slide_mpp),
        "source": source,
        "software": f"glmed {__version__}",
    }
    write_pyramidal_tiff(path, mask, tile=tile, compression=compression, resampling="nearest", progress=progress,
                         lookup=encoding.lookup, colormap=encoding.colormap, mpp=mpp,
                         description=json.dumps({METADATA_KEY: metadata}))


def read_mask_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The metadata :func:`write_mask_tiff` stored in ``path``, or None for a TIFF without it."""
    import tifffile

    with tifffile.TiffFile(os.fspath(path)) as tiff:
        description = tiff.pages.first.description or ""
    try:
        found = json.loads(description)
    except ValueError:
        return None
    return found.get(METADATA_KEY) if isinstance(found, dict) else None


def _pair_or_none(pair: tuple[float, float] | None) -> list[float] | None:
    return None if pair is None else [float(pair[0]), float(pair[1])]


PROBABILITIES_KEY = "glmed_probabilities"
"""The key of a probability pyramid's metadata in its ImageDescription JSON."""


def write_probability_tiff(
    path: str | os.PathLike,
    probabilities: np.ndarray,
    classes: Sequence[str],
    *,
    mpp: tuple[float, float] | None = None,
    source: str | None = None,
    slide_size: tuple[int, int] | None = None,
    slide_mpp: tuple[float, float] | None = None,
    tile: int = 512,
    compression: str | None = "zlib",
    progress: bool = False,
) -> None:
    """Write an ``H x W`` uint8 map of how sure a mask is as a greyscale pyramidal TIFF, atomically.

    0 to 255 stand for probabilities 0 to 1: for two classes the foreground's (a heat map: white
    where the model is sure of it), for more the winning class's
    (:func:`glmed.inference.merging.confidence_bytes`). Levels halve by nearest neighbour, so a
    memory-mapped map streams to disk as a mask does. Level 0's ImageDescription is JSON,
    ``{"glmed_probabilities": {...}}`` with ``of`` (``"foreground"`` or ``"winning class"``),
    ``classes``, and the sizes and µm/px of :func:`write_mask_tiff`'s metadata.

    Args:
        path: the ``.tif`` to write.
        probabilities: ``H x W`` uint8; a :class:`numpy.memmap` is fine.
        classes: the model's class names, background first.
        mpp: ``(rows, cols)`` µm per pixel of the map (the mask's), or None.
        source: the slide's name.
        slide_size: ``(height, width)`` of the slide's level 0; the map's own size by default.
        slide_mpp: µm per level-0 pixel of the slide; ``mpp`` by default.
        tile: tile side, a multiple of 16.
        compression: ``"zlib"``, ``"lzw"`` or None (lossless: the values are measurements).
        progress: a progress bar over the tiles.
    """
    from glmed import __version__

    metadata = {
        "of": "foreground" if len(classes) == 2 else "winning class",
        "scale": "0-255 for probability 0-1",
        "classes": list(classes),
        "level0_size": [int(probabilities.shape[0]), int(probabilities.shape[1])],
        "mpp": _pair_or_none(mpp),
        "slide_size": [int(v) for v in (probabilities.shape[:2] if slide_size is None else slide_size)],
        "slide_mpp": _pair_or_none(mpp if slide_size is None and slide_mpp is None else slide_mpp),
        "source": source,
        "software": f"glmed {__version__}",
    }
    write_pyramidal_tiff(path, probabilities, tile=tile, compression=compression, resampling="nearest",
                         progress=progress, mpp=mpp, description=json.dumps({PROBABILITIES_KEY: metadata}))
