"""What a whole-slide prediction leaves beside its mask TIFF: an outline thumbnail, QuPath GeoJSON, class areas.

Each is made from the written mask pyramid's coarse levels (or, for the areas, one streamed pass
over the mask), never from a full-resolution copy in memory, so a 100k x 100k slide costs what a
4096-pixel view costs:

- :func:`write_outline_thumbnail`: the slide's overview (from its coarsest sufficient level, area
  averaged) with the predicted regions' outlines drawn in their class colours
  (:func:`glmed.io.geojson.class_colour`), one pixel wide just inside each region, as a PNG.
- :func:`write_mask_geojson`: the regions as QuPath annotations (:mod:`glmed.io.geojson`),
  polygonised from the mask's pyramid level nearest :data:`GEOJSON_VIEW_SIDE` pixels on its longer
  side. A view pixel's corners are multiplied by the view's scale (level-0 size over view size,
  per axis) to give level-0 ``[x, y]`` coordinates, so outlines are placed to within one view
  pixel; rings are then simplified with Douglas-Peucker at one view pixel's tolerance (finer
  where a ring's area would change by more than 1%). Areas are the view's pixel counts times the
  scale's square (in µm² with the µm/px the mask TIFF carries).
- :func:`class_pixel_counts`: exact level-0 pixels per class, a band of rows at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glmed.conventions import Size
from glmed.inference.result import thumbnail_size
from glmed.io.base import ImageReader
from glmed.io.geojson import DEFAULT_VIEW_SIDE, class_colour, write_geojson
from glmed.io.mapped import row_bands
from glmed.io.mask_tiff import MaskEncoding
from glmed.io.writers import atomic_path

DEFAULT_THUMBNAIL_SIDE = 1024
"""Longer side, in pixels, of the outline thumbnail."""

GEOJSON_VIEW_SIDE = DEFAULT_VIEW_SIDE
"""Longer side of the mask view polygonised for the GeoJSON (:data:`glmed.io.geojson.DEFAULT_VIEW_SIDE`)."""

GEOJSON_SUFFIXES = (".geojson", ".json")

BAND_BYTES = 64 << 20
"""Bytes :func:`class_pixel_counts` holds at a time: a band of the mask as the int64 copy ``np.bincount`` makes."""


def check_output_path(path: str | os.PathLike, suffixes: Sequence[str], what: str) -> Path:
    """``path`` as a Path if it can be written as ``what``: a listed suffix, an existing folder, not a folder.

    Called before any inference, so a typo costs nothing.

    Raises:
        ValueError: naming ``path`` and what is wrong with it.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; name the {what} file to write")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path}: a {what} must be named {' or '.join(suffixes)}")
    if not path.parent.is_dir():
        raise ValueError(f"{path}: the folder {path.parent} does not exist")
    return path


def write_outline_thumbnail(
    slide: ImageReader,
    mask: str | os.PathLike,
    path: str | os.PathLike,
    encoding: MaskEncoding,
    side: int = DEFAULT_THUMBNAIL_SIDE,
) -> Size:
    """Write the slide's thumbnail with the mask's outlines over it as an RGB PNG, atomically.

    Args:
        slide: the slide, open.
        mask: the mask TIFF written for it (same level-0 size), sampled at the thumbnail's pixels.
        path: the ``.png`` to write.
        encoding: how the mask's values are stored (for class indices and colours).
        side: the thumbnail's longer side (smaller slides keep their size).

    Returns:
        The thumbnail's ``(height, width)``.
    """
    from PIL import Image
    from skimage.segmentation import find_boundaries

    from glmed.io.convert import to_rgb8
    from glmed.io.open import open_image

    size = thumbnail_size(slide.size, side)
    picture = to_rgb8(slide.resized(size), slide.name).copy()
    with open_image(mask) as reader:
        labels = encoding.to_index(reader.sampled(size)[..., 0])
    edges = find_boundaries(labels, mode="inner") & (labels != 0)
    colours = np.array([class_colour(index) for index in range(len(encoding.classes))], dtype=np.uint8)
    picture[edges] = colours[labels[edges]]
    with atomic_path(path) as temporary:
        Image.fromarray(picture, mode="RGB").save(temporary, format="PNG")
    return (int(picture.shape[0]), int(picture.shape[1]))


def write_mask_geojson(
    mask: str | os.PathLike, path: str | os.PathLike, classes: Sequence[str], view_side: int = GEOJSON_VIEW_SIDE
) -> int:
    """Write the mask TIFF's regions as a QuPath GeoJSON FeatureCollection; returns the number of features.

    Coordinates are the slide's level-0 pixels whatever level was read, and whatever µm/px the
    mask was made at (the slide size its metadata records places them; see the module docstring);
    areas are in µm² too when the mask TIFF carries the slide's µm/px.
    """
    return write_geojson(path, mask, classes=list(classes), view_side=view_side)


def class_pixel_counts(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Level-0 pixels of each class in ``mask`` (``num_classes`` int64), counted a band of rows at a time.

    A memory-mapped slide mask is read once, sequentially, and never held whole nor left resident.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    # bincount works on a copy as int64 (8 bytes a pixel): the band is sized for that copy, not the mask
    for band in row_bands(mask, BAND_BYTES, bytes_per_pixel=8):
        counts += np.bincount(np.asarray(mask[band]).ravel(), minlength=num_classes)[:num_classes]
    return counts
