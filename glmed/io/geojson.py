"""Segmentation masks as GeoJSON polygons that QuPath imports as classified annotations.

Pathologists review a model's output in a slide viewer, QuPath above all, whose object import
(File > Import objects, or drag and drop) reads a GeoJSON ``FeatureCollection``. A mask becomes
one ``Feature`` per connected region of a class (or, with ``group="class"``, one per class):

- ``geometry``: a ``Polygon`` (outer ring, then its holes) or ``MultiPolygon``, in level-0 pixel
  coordinates ``[x, y]`` = ``[col, row]`` with the origin at the top-left corner of the image's
  top-left pixel, as QuPath and OpenSlide place them. Rings are closed, outer rings
  counter-clockwise and holes clockwise in those numbers (RFC 7946's rule).
- ``properties``: ``objectType: "annotation"``, ``classification: {name, color: [r, g, b]}``,
  and ``measurements`` (which QuPath lists with the object): the region's area in level-0
  pixels and, when the µm/px is known, in µm², counted from the mask's pixels.

Outlines follow the mask's pixel edges exactly (where two pixels touch only by a corner the
corner is cut by an eighth of a pixel, so no ring touches itself), then are simplified
(Douglas-Peucker, ``tolerance`` mask pixels, made finer where a ring's area would change by more
than ``max_area_error``), so a region's polygon area matches its pixel count to 1% and files stay
small: the tissue of a generated 100k x 100k slide, polygonised from its 8192-pixel view, is
about 100 kB (14 s on a busy 2-core machine). A downsampled mask is scaled to level 0 by its
``scale`` (or found by reading a mask file's coarse pyramid level: :func:`mask_to_geojson` with a
path or reader; a glmed mask TIFF made at another µm/px than its slide's is placed in the slide's
level-0 pixels, from the slide size its metadata records).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from glmed.io.base import ImageReader
from glmed.io.writers import atomic_path

PALETTE: tuple[tuple[int, int, int], ...] = (
    (200, 0, 0),
    (0, 150, 0),
    (0, 0, 200),
    (230, 160, 0),
    (150, 0, 150),
    (0, 160, 160),
    (120, 80, 40),
    (255, 105, 180),
    (100, 100, 100),
    (160, 200, 60),
)
"""Default class colours ``[r, g, b]``, by class index (wrapping around): red for class 1, the usual tumour class."""



def class_colour(value: int) -> tuple[int, int, int]:
    """Class ``value``'s default ``(r, g, b)``: :data:`PALETTE` from class 1 on, wrapping; black for 0 (background).

    The one class-to-colour rule of glmed's slide outputs: GeoJSON classifications, the mask
    TIFF's colour map and the outline thumbnail all use it.
    """
    return (0, 0, 0) if value == 0 else PALETTE[(value - 1) % len(PALETTE)]


DEFAULT_VIEW_SIDE = 4096
"""Longest side of the view a mask file is polygonised from: 24 level-0 pixels (6 µm at 40x) a
view pixel on a 100k-pixel slide. Memory grows with its square: about 240 MB at the peak for 4096
(the pyramid level read, the view, its labels, a region's crop), about 1 GB for 8192."""

GROUPS = ("region", "class")


def mask_to_geojson(
    mask: np.ndarray | ImageReader | str | os.PathLike,
    *,
    classes: Sequence[str] | Mapping[int, str] | None = None,
    colors: Sequence[Sequence[int]] | Mapping[int, Sequence[int]] | None = None,
    background: int = 0,
    scale: float | tuple[float, float] = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    mpp: float | tuple[float, float] | None = None,
    tolerance: float = 1.0,
    max_area_error: float = 0.01,
    min_area: float = 0.0,
    group: str = "region",
    view_side: int = DEFAULT_VIEW_SIDE,
    decimals: int = 2,
) -> dict[str, Any]:
    """A class-index mask as a GeoJSON FeatureCollection of classified annotations (a dict, ready for ``json.dump``).

    Args:
        mask: ``h x w`` class indices (bool, or any integer type; ``h x w x 1`` too), or a mask
            file or reader (e.g. :func:`glmed.predict_to_tiff`'s pyramid): read from its pyramid
            level nearest ``view_side`` by nearest neighbour, its size to level 0 folded into ``scale``.
            A binary mask stored as 0/255 is read as 0/1.
        classes: class names, by index (``["background", "tumour"]``) or as ``{value: name}``;
            values without a name are called ``"class N"``.
        colors: ``[r, g, b]`` per class, by index or ``{value: rgb}``; :data:`PALETTE` by default.
        background: the value that is not exported.
        scale: level-0 pixels per mask pixel, one number or ``(rows, cols)``: a mask of a slide's
            view 1/16 of its size has scale 16.
        offset: level-0 ``(row, col)`` of the mask's top-left corner (a crop or a band of a slide).
        mpp: microns per level-0 pixel (one number or ``(rows, cols)``) for the µm² areas; for a mask
            file or reader read at its own scale, what the file says by default.
        tolerance: simplification, in mask pixels (0 keeps every corner of the pixels' outline).
        max_area_error: a ring's simplification is made finer until its area is within this
            fraction of the traced ring's, so small regions keep their size.
        min_area: regions smaller than this, in level-0 pixels, are left out.
        group: ``"region"``: one Feature per connected region (4-connected), a Polygon;
            ``"class"``: one Feature per class, a MultiPolygon of its regions.
        view_side: for a mask file or reader, the longest side of the view polygonised.
        decimals: coordinates are rounded to this many decimals (level-0 pixels).

    Returns:
        ``{"type": "FeatureCollection", "features": [...]}``, regions in raster order of their
        first pixel, classes in increasing value; no features for a mask of background only.

    Raises:
        ValueError: naming the mask, for a mask that is not 2-D class indices, or bad options.
    """
    name = "mask"
    if isinstance(mask, (str, os.PathLike, ImageReader)):
        mask, name, file_scale, file_mpp = _read_mask(mask, view_side)
        sr, sc = _pair(scale, "scale", name)
        scale = (sr * file_scale[0], sc * file_scale[1])
        if mpp is None and (sr, sc) == (1.0, 1.0):
            mpp = file_mpp
    array = _check_mask(np.asarray(mask), name)
    scale_rc = _pair(scale, "scale", name)
    if len(offset) != 2 or not all(math.isfinite(float(v)) for v in offset):
        raise ValueError(f"{name}: offset must be the level-0 (row, col) of the mask's corner, got {offset!r}")
    mpp_rc = None if mpp is None else _pair(mpp, "mpp", name)
    if group not in GROUPS:
        raise ValueError(f"{name}: unknown group {group!r}; choose one of {GROUPS}")
    if tolerance < 0 or min_area < 0 or max_area_error < 0:
        given = f"{tolerance}, {max_area_error} and {min_area}"
        raise ValueError(f"{name}: tolerance, max_area_error and min_area must be >= 0, got {given}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    names, palette = _class_names(classes, name), _class_colors(colors, name)
    values = [int(v) for v in np.unique(array) if int(v) != background]
    # a binary mask stored as 0/255 (as viewers show it) is class 1, unless 255 is named as such
    binary_255 = values == [255] and background == 0 and 255 not in names
    pixel_area = scale_rc[0] * scale_rc[1]
    features = []
    for value in values:
        index = 1 if binary_255 else value
        regions = [
            region
            for region in _regions(array == value, tolerance, max_area_error)
            if region.pixels * pixel_area >= min_area
        ]
        if not regions:
            continue
        classification = {"name": names.get(index, f"class {index}"), "color": palette(index)}
        polygons = [_place(region.rings, scale_rc, offset, decimals) for region in regions]
        areas = [region.pixels * pixel_area for region in regions]
        if group == "class":
            features.append(_feature({"type": "MultiPolygon", "coordinates": polygons}, classification,
                                     sum(areas), mpp_rc))
        else:
            features.extend(
                _feature({"type": "Polygon", "coordinates": polygon}, classification, area, mpp_rc)
                for polygon, area in zip(polygons, areas, strict=True)
            )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike, mask: np.ndarray | ImageReader | str | os.PathLike, **options: Any) -> int:
    """Write :func:`mask_to_geojson`'s collection to ``path`` (compact JSON, UTF-8), atomically.

    Args:
        path: the ``.geojson`` (or ``.json``) file to write.
        mask: as for :func:`mask_to_geojson`.
        options: :func:`mask_to_geojson`'s keyword arguments.

    Returns:
        The number of features written.

    Raises:
        ValueError: naming ``path``, for a folder that does not exist, or a name that is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; name the .geojson file to write")
    if not path.parent.is_dir():
        raise ValueError(f"{path}: the folder {path.parent} does not exist")
    collection = mask_to_geojson(mask, **options)
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        json.dump(collection, handle, separators=(",", ":"), ensure_ascii=False)
    return len(collection["features"])


class _Region(NamedTuple):
    """One connected region: its rings in mask-corner coordinates ``(row, col)``, outer first, and pixel count."""

    rings: list[np.ndarray]
    pixels: int


def _regions(binary: np.ndarray, tolerance: float, max_error: float) -> list[_Region]:
    """The 4-connected regions of ``binary``, each traced on its own padded crop, in raster order.

    On a crop holding one 4-connected region, marching squares (which joins foreground across
    edges only, background across corners too) gives exactly one outer ring, its largest, and
    one ring per hole; :func:`_pixel_edges` turns them into the pixels' own edges.
    """
    from scipy import ndimage
    from skimage.measure import find_contours

    labels, _ = ndimage.label(binary)
    regions = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        rows, cols = found
        crop = np.pad(labels[found] == index, 1)
        rings = [_pixel_edges(contour, crop) for contour in find_contours(crop.astype(np.float32), 0.5)]
        rings.sort(key=lambda ring: -abs(_signed_area(ring)))
        # crop index (i, j) is mask pixel (i - 1 + top, j - 1 + left); its corner is half an index before its centre
        shift = np.array([rows.start - 0.5, cols.start - 0.5])
        regions.append(_Region([_simplify(ring, tolerance, max_error) + shift for ring in rings], int(crop.sum())))
    return regions


def _pixel_edges(contour: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """A closed marching-squares contour of ``crop`` turned into the outline of its pixels (their edges).

    Marching squares joins the midpoints of pixel edges, cutting every corner of the outline by
    an eighth of a pixel. Each of its segments crosses one 2 x 2 cell of pixel centres; putting
    the cell's centre (the pixels' shared corner) between the segment's ends restores the corner,
    and the midpoints, which then lie on straight pixel edges, are dropped. Where foreground
    pixels touch by a corner only (a saddle cell) the cut is kept, so no ring touches itself.

    Returns:
        The outline's corners, in crop index coordinates, closed (first point repeated last).
    """
    start, end = contour[:-1], contour[1:]
    cells = np.floor((start + end) / 2).astype(np.int64)
    i, j = cells[:, 0], cells[:, 1]
    saddle = (crop[i, j] == crop[i + 1, j + 1]) & (crop[i, j + 1] == crop[i + 1, j]) & (crop[i, j] != crop[i, j + 1])
    outline = _interleave(start, cells + 0.5, saddle)
    # corners along a straight run of pixel edges are not vertices
    before, after = outline - np.roll(outline, 1, axis=0), np.roll(outline, -1, axis=0) - outline
    turns = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0
    outline = outline[turns] if turns.sum() >= 3 else outline
    return np.concatenate([outline, outline[:1]])


def _interleave(midpoints: np.ndarray, corners: np.ndarray, saddle: np.ndarray) -> np.ndarray:
    """Corners of non-saddle segments, plus the midpoints that begin or end a saddle's cut, in ring order."""
    ends_cut = np.roll(saddle, 1)  # the midpoint before segment k ends segment k - 1
    take_mid = saddle | ends_cut
    count = len(midpoints)
    order = np.empty((2 * count, 2))
    use = np.zeros(2 * count, dtype=bool)
    order[0::2], use[0::2] = midpoints, take_mid
    order[1::2], use[1::2] = corners, ~saddle
    return order[use]


def _simplify(ring: np.ndarray, tolerance: float, max_error: float) -> np.ndarray:
    """Douglas-Peucker on a closed ring, the tolerance halved until the area changes by at most ``max_error``.

    The ring as traced when no tolerance keeps the area (or simplifying collapses it).
    """
    from skimage.measure import approximate_polygon

    area = abs(_signed_area(ring))
    while tolerance >= 0.125:
        simpler = approximate_polygon(ring, tolerance)
        if len(simpler) >= 4 and abs(abs(_signed_area(simpler)) - area) <= max_error * area:
            return simpler
        tolerance /= 2
    return ring


def _place(
    rings: list[np.ndarray], scale: tuple[float, float], offset: tuple[float, float], decimals: int
) -> list[list[list[float]]]:
    """Rings in mask ``(row, col)`` as GeoJSON ``[[x, y], ...]`` level-0 rings: outer CCW, holes CW."""
    placed = []
    for number, ring in enumerate(rings):
        xy = np.stack([ring[:, 1] * scale[1] + offset[1], ring[:, 0] * scale[0] + offset[0]], axis=1)
        xy = np.round(xy, decimals)
        if not np.array_equal(xy[0], xy[-1]):
            xy = np.concatenate([xy, xy[:1]])
        if (_signed_area(xy) > 0) != (number == 0):
            xy = xy[::-1]
        placed.append(xy.tolist())
    return placed


def _feature(
    geometry: dict[str, Any], classification: dict[str, Any], area: float, mpp: tuple[float, float] | None
) -> dict[str, Any]:
    measurements = {"Area px^2": round(float(area), 4)}
    if mpp is not None:
        measurements["Area µm^2"] = round(float(area) * mpp[0] * mpp[1], 4)
    properties = {"objectType": "annotation", "classification": classification, "measurements": measurements}
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ring of ``(a, b)`` points: positive when counter-clockwise in (a, b)."""
    a, b = ring[:, 0], ring[:, 1]
    return float(np.dot(a, np.roll(b, -1)) - np.dot(b, np.roll(a, -1))) / 2


def _read_mask(
    source: ImageReader | str | os.PathLike, view_side: int
) -> tuple[np.ndarray, str, tuple[float, float], tuple[float, float] | None]:
    """A mask file's view at most ``view_side`` wide (nearest neighbour), its name, scale to level 0 and µm/px.

    Level 0 is the slide's: a glmed mask TIFF made at another µm/px than its slide's
    (:func:`glmed.predict_to_tiff` with ``mpp``) records the slide's size and µm/px, and those place
    and measure the outlines.
    """
    from glmed.io.open import open_as_reader

    if view_side < 1:
        raise ValueError(f"view_side must be positive, got {view_side}")
    reader, opened = open_as_reader(source)
    try:
        if reader.channels != 1:
            raise ValueError(
                f"{reader.name}: a mask has one channel of class indices, this image has {reader.channels}"
            )
        height, width = reader.size
        factor = min(1.0, view_side / max(height, width))
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        view = reader.sampled(size)[..., 0]
        slide_size, mpp = _slide_of(reader)
        slide_size = slide_size or (height, width)
        return view, reader.name, (slide_size[0] / size[0], slide_size[1] / size[1]), mpp
    finally:
        if opened:
            reader.close()


def _slide_of(reader: ImageReader) -> tuple[tuple[int, int] | None, tuple[float, float] | None]:
    """The slide's level-0 size and µm/px a glmed mask TIFF records, or ``(None, the file's µm/px)``.

    A mask made at another µm/px than its slide's has another size than the slide; any other mask
    file (not glmed's, or older) answers with its own resolution.
    """
    from glmed.io.mask_tiff import read_mask_metadata
    from glmed.io.resolution import microns_per_pixel

    path = getattr(reader, "path", None)
    metadata = None
    if isinstance(path, str) and path.lower().endswith((".tif", ".tiff")):
        try:
            metadata = read_mask_metadata(path)
        except (OSError, ValueError):
            metadata = None
    if not isinstance(metadata, dict):
        return None, microns_per_pixel(reader)
    slide_size, slide_mpp = metadata.get("slide_size"), metadata.get("slide_mpp")
    if not (isinstance(slide_size, list) and len(slide_size) == 2
            and all(isinstance(v, int) and v > 0 for v in slide_size)):
        return None, microns_per_pixel(reader)
    mpp = (float(slide_mpp[0]), float(slide_mpp[1])) if isinstance(slide_mpp, list) and len(slide_mpp) == 2 else None
    return (slide_size[0], slide_size[1]), mpp


def _check_mask(mask: np.ndarray, name: str) -> np.ndarray:
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"{name}: a mask is a non-empty h x w array of class indices, got shape {mask.shape}")
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
        raise ValueError(f"{name}: a mask holds class indices (bool or integers), got {mask.dtype}; threshold it first")
    return mask


def _pair(value: float | Sequence[float], what: str, name: str) -> tuple[float, float]:
    """One positive number for both axes, or a ``(rows, cols)`` pair, as two floats."""
    try:
        pair = [float(value)] * 2 if isinstance(value, (int, float, np.number)) else [float(v) for v in value]
    except (TypeError, ValueError):
        pair = []
    if len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"{name}: {what} must be a positive number or (rows, cols), got {value!r}")
    return (pair[0], pair[1])


def _class_names(classes: Sequence[str] | Mapping[int, str] | None, name: str) -> dict[int, str]:
    if classes is None:
        return {}
    if isinstance(classes, str):
        raise ValueError(f"{name}: classes is a list of names or a {{value: name}} mapping, got the string {classes!r}")
    names = dict(classes) if isinstance(classes, Mapping) else dict(enumerate(classes))
    for value, label in names.items():
        if not isinstance(label, str) or not label:
            raise ValueError(f"{name}: class {value}'s name must be a non-empty string, got {label!r}")
    return names


def _class_colors(
    colors: Sequence[Sequence[int]] | Mapping[int, Sequence[int]] | None, name: str
) -> Callable[[int], list[int]]:
    """A function from class value to ``[r, g, b]``."""
    given = {} if colors is None else dict(colors) if isinstance(colors, Mapping) else dict(enumerate(colors))
    checked: dict[int, list[int]] = {}
    for value, rgb in given.items():
        triple = list(rgb)
        if len(triple) != 3 or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in triple):
            raise ValueError(f"{name}: class {value}'s colour must be [r, g, b] integers in 0..255, got {rgb!r}")
        checked[int(value)] = [int(v) for v in triple]

    def color(value: int) -> list[int]:
        return checked.get(value) or list(class_colour(value))

    return color
