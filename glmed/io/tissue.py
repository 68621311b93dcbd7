"""Where the tissue is on a slide: a mask from a low-resolution view, and the questions inference asks of it.

Most of a biopsy slide is empty glass; segmenting it costs as much as segmenting tissue and finds
nothing. :func:`detect_tissue` reads the slide's downsampled view (from its coarsest sufficient
pyramid level, :meth:`~glmed.io.base.ImageReader.resized`), thresholds the HSV saturation with
Otsu's method (stained tissue is coloured, glass is grey-white whatever its brightness), and
cleans the mask up: pieces of tissue smaller than a minimum area are dropped (dust, debris) and
holes smaller than one are filled (nuclei-free gaps inside tissue). Areas are in µm² when the
slide says its resolution (:mod:`glmed.io.resolution`), so the clean-up means the same at 20x
and 40x; otherwise in level-0 pixels.

The :class:`TissueMask` it returns answers, in level-0 pixels:

- :meth:`~TissueMask.box_fractions` / :meth:`~TissueMask.contains_tissue`: how much of each
  patch box is tissue, so patches of glass are skipped (a summed-area table makes it O(1) a box);
- :meth:`~TissueMask.component_boxes`: one box per piece of tissue, merged where they overlap,
  for coarse-to-fine's refinement regions;
- :attr:`~TissueMask.area_px`, :attr:`~TissueMask.area_um2`, :attr:`~TissueMask.fraction`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from glmed.conventions import Box, Size
from glmed.geometry import grow_to_size, merge_overlapping
from glmed.io.open import ImageLike, open_as_reader

DEFAULT_VIEW_SIDE = 2048
"""Longest side, in pixels, of the view tissue is detected on: 50 level-0 pixels (12 µm at 40x) a
mask pixel on a 100k-pixel slide, 12 MB of RGB."""

MIN_SATURATION = 0.05
"""Saturation below which a pixel is never tissue, whatever Otsu's threshold: glass with scanner
noise spans about 0.0 to 0.04, and Otsu would split even that in two on a blank slide."""

MIN_TISSUE_UM2 = 5_000.0
"""Pieces of tissue smaller than this (a 70 µm square) are dropped as dust or debris."""

MIN_HOLE_UM2 = 5_000.0
"""Holes in tissue smaller than this are filled."""

ASSUMED_MPP = 0.25
"""When a slide does not say its µm/px, the µm² defaults become level-0 pixels as at 40x (0.25 µm/px)."""


@dataclass(frozen=True, eq=False)
class TissueMask:
    """Tissue on a slide, as a boolean mask over a downsampled view of it.

    Attributes:
        mask: ``h x w`` bool, True on tissue; mask pixel ``(i, j)`` covers level-0 rows
            ``[i * sr, (i + 1) * sr)`` and columns ``[j * sc, (j + 1) * sc)``, ``(sr, sc)`` = :attr:`scale`.
        image_size: ``(height, width)`` of the slide at level 0.
        mpp: microns per level-0 pixel (mean of the axes), or None when unknown.
        threshold: the saturation threshold used, or None when the view was uniform (no Otsu split:
            all tissue if its saturation exceeds :data:`MIN_SATURATION`, else none).
    """

    mask: np.ndarray
    image_size: Size
    mpp: float | None = None
    threshold: float | None = None
    _integral: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask)
        if mask.ndim != 2 or mask.size == 0:
            raise ValueError(f"a tissue mask is a non-empty h x w array, got shape {mask.shape}")
        if self.image_size[0] < mask.shape[0] or self.image_size[1] < mask.shape[1]:
            raise ValueError(f"a tissue mask of shape {mask.shape} is larger than its image {tuple(self.image_size)}")
        integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
        np.cumsum(np.cumsum(mask != 0, axis=0), axis=1, out=integral[1:, 1:])
        object.__setattr__(self, "mask", mask != 0)
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        object.__setattr__(self, "_integral", integral)

    @property
    def scale(self) -> tuple[float, float]:
        """``(rows, cols)`` level-0 pixels per mask pixel."""
        return (self.image_size[0] / self.mask.shape[0], self.image_size[1] / self.mask.shape[1])

    @property
    def fraction(self) -> float:
        """The fraction of the slide that is tissue."""
        return float(self._integral[-1, -1]) / self.mask.size

    @property
    def area_px(self) -> float:
        """Tissue area in level-0 pixels."""
        return float(self._integral[-1, -1]) * self.scale[0] * self.scale[1]

    @property
    def area_um2(self) -> float | None:
        """Tissue area in µm², or None when the µm/px is unknown."""
        return None if self.mpp is None else self.area_px * self.mpp**2

    def box_fractions(self, boxes: Sequence[Box] | np.ndarray) -> np.ndarray:
        """The fraction of tissue in each level-0 box.

        A box is widened to whole mask pixels (outward), so a patch touching a tissue pixel of the
        mask sees some tissue: at the mask's resolution, erring towards reading a patch.

        Args:
            boxes: ``N x 4`` ``(row0, col0, row1, col1)`` in level-0 pixels, end-exclusive.

        Returns:
            ``N`` floats in ``[0, 1]``.
        """
        array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(array) == 0:
            return np.zeros(0)
        height, width = self.image_size
        valid = (
            (array[:, 0] >= 0) & (array[:, 1] >= 0) & (array[:, 2] <= height) & (array[:, 3] <= width)
            & (array[:, 0] < array[:, 2]) & (array[:, 1] < array[:, 3])
        )
        if not valid.all():
            bad = tuple(int(v) for v in array[np.argmin(valid)])
            raise ValueError(f"box {bad} is empty or outside the image of size {tuple(self.image_size)}")
        sr, sc = self.scale
        h, w = self.mask.shape
        r0 = np.clip(np.floor(array[:, 0] / sr + 1e-9), 0, h - 1).astype(np.int64)
        c0 = np.clip(np.floor(array[:, 1] / sc + 1e-9), 0, w - 1).astype(np.int64)
        r1 = np.clip(np.ceil(array[:, 2] / sr - 1e-9), r0 + 1, h).astype(np.int64)
        c1 = np.clip(np.ceil(array[:, 3] / sc - 1e-9), c0 + 1, w).astype(np.int64)
        table = self._integral
        inside = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
        return inside / ((r1 - r0) * (c1 - c0))

    def contains_tissue(self, boxes: Sequence[Box] | np.ndarray, min_fraction: float = 0.0) -> np.ndarray:
        """Whether each level-0 box holds more than ``min_fraction`` tissue (any tissue by default).

        Returns:
            ``N`` bools: False for the patches inference may skip and write as background.
        """
        if not 0.0 <= min_fraction < 1.0:
            raise ValueError(f"min_fraction must be in [0, 1), got {min_fraction}")
        return self.box_fractions(boxes) > min_fraction

    def on_grid(self, shape: Size) -> np.ndarray:
        """Whether each cell of a ``shape`` grid laid over the whole slide holds any tissue.

        Cell ``(i, j)`` covers level-0 rows ``[i * H / h, (i + 1) * H / h)`` and the columns
        alike, as a pixel of a global view of ``shape`` does; used to keep coarse-to-fine's
        foreground, found on the global map, on tissue.

        Returns:
            ``h x w`` bool.
        """
        rows, cols = int(shape[0]), int(shape[1])
        if rows < 1 or cols < 1:
            raise ValueError(f"a grid needs a positive shape, got {tuple(shape)}")
        height, width = self.image_size
        r = np.arange(rows + 1) * (height / rows)
        c = np.arange(cols + 1) * (width / cols)
        r0, c0 = np.meshgrid(r[:-1], c[:-1], indexing="ij")
        r1, c1 = np.meshgrid(r[1:], c[1:], indexing="ij")
        boxes = np.stack([r0.ravel(), c0.ravel(), np.minimum(r1, height).ravel(), np.minimum(c1, width).ravel()], 1)
        return (self.box_fractions(boxes) > 0).reshape(rows, cols)

    def digest(self) -> str:
        """A short hash of the mask and its slide size: two masks with the same digest skip the same patches."""
        import hashlib

        digest = hashlib.sha256(repr((self.mask.shape, self.image_size)).encode())
        digest.update(np.packbits(self.mask).tobytes())
        return digest.hexdigest()[:16]

    def component_boxes(self, margin: int = 0, min_size: Size = (1, 1)) -> list[Box]:
        """One level-0 box per piece of tissue (8-connected), widened by ``margin``, merged where they overlap.

        Args:
            margin: level-0 pixels added on every side (context around the tissue), clipped to the image.
            min_size: each box is grown about its centre to at least this ``(height, width)`` (e.g. one
                patch), shifted inside the image rather than cut.

        Returns:
            Disjoint boxes, sorted; empty when there is no tissue.
        """
        from scipy import ndimage

        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        labels, _ = ndimage.label(self.mask, structure=np.ones((3, 3), dtype=bool))
        sr, sc = self.scale
        height, width = self.image_size
        boxes = []
        for found in ndimage.find_objects(labels):
            if found is None:
                continue
            rows, cols = found
            box = (
                max(0, math.floor(rows.start * sr + 1e-9) - margin),
                max(0, math.floor(cols.start * sc + 1e-9) - margin),
                min(height, math.ceil(rows.stop * sr - 1e-9) + margin),
                min(width, math.ceil(cols.stop * sc - 1e-9) + margin),
            )
            boxes.append(grow_to_size(box, min_size, self.image_size))
        return merge_overlapping(boxes)


def detect_tissue(
    image: ImageLike,
    *,
    view_side: int = DEFAULT_VIEW_SIDE,
    mpp: float | None = None,
    min_saturation: float = MIN_SATURATION,
    min_tissue_um2: float = MIN_TISSUE_UM2,
    min_hole_um2: float = MIN_HOLE_UM2,
) -> TissueMask:
    """Find the tissue on a slide from its downsampled view: Otsu on saturation, then a clean-up.

    1. The view: the whole slide resampled (area average) so its longest side is ``view_side``
       (or the slide's own size if smaller), read from the coarsest pyramid level that suffices.
    2. HSV saturation, ``(max - min) / max`` of R, G, B: high on stained tissue, near 0 on glass,
       on black (out-of-scan areas) and on white alike.
    3. Otsu's threshold on it, never below ``min_saturation``; a view of a single saturation
       (blank glass, or a crop entirely inside tissue) is not split: it is all tissue when its
       saturation exceeds ``min_saturation``, else none.
    4. Pieces of tissue under ``min_tissue_um2`` are dropped and holes under ``min_hole_um2``
       filled. Without a known µm/px, both become level-0 pixels as at :data:`ASSUMED_MPP`.

    Args:
        image: a slide path, an open reader (left open) or an ``H x W x 3`` (or RGBA) array.
        view_side: longest side of the view, in pixels; the mask has this resolution.
        mpp: microns per level-0 pixel; by default what the file says, if anything.
        min_saturation: in ``[0, 1)``; the lowest threshold Otsu may pick.
        min_tissue_um2: smallest piece of tissue kept (0 keeps all).
        min_hole_um2: largest hole filled is just under this (0 fills none).

    Raises:
        ValueError: naming the image, when it has no colour (grey images have no saturation) or an
            option is out of range.
    """
    if view_side < 1:
        raise ValueError(f"view_side must be positive, got {view_side}")
    if not 0.0 <= min_saturation < 1.0:
        raise ValueError(f"min_saturation must be in [0, 1), got {min_saturation}")
    if min_tissue_um2 < 0 or min_hole_um2 < 0:
        raise ValueError(f"minimum areas must be >= 0, got {min_tissue_um2} and {min_hole_um2}")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp (microns per pixel) must be positive, got {mpp}")
    reader, opened = open_as_reader(image)
    try:
        if reader.channels not in (3, 4):
            raise ValueError(
                f"{reader.name}: tissue detection needs colour (RGB) pixels, the image has {reader.channels} channel(s)"
            )
        if mpp is None:
            from glmed.io.resolution import mean_mpp

            mpp = mean_mpp(reader)
        size = (int(reader.size[0]), int(reader.size[1]))
        view = reader.resized(_view_size(size, view_side))
    finally:
        if opened:
            reader.close()
    saturation = _saturation(view)
    mask, threshold = _threshold(saturation, min_saturation)
    pixel_um2 = (mpp if mpp is not None else ASSUMED_MPP) ** 2 * (size[0] / mask.shape[0]) * (size[1] / mask.shape[1])
    mask = _clean(mask, min_tissue_um2 / pixel_um2, min_hole_um2 / pixel_um2)
    return TissueMask(mask, size, mpp, threshold)


def _view_size(size: Size, side: int) -> Size:
    """``size`` scaled down (never up) so its longest side is ``side``, at least one pixel each."""
    scale = min(1.0, side / max(size))
    return (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def _saturation(view: np.ndarray) -> np.ndarray:
    """HSV saturation of an ``h x w x 3`` (or RGBA, alpha ignored) image, in ``[0, 1]`` as float32."""
    rgb = view[..., :3].astype(np.float32)
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    return np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)


def _threshold(saturation: np.ndarray, floor: float) -> tuple[np.ndarray, float | None]:
    """Tissue where saturation exceeds Otsu's threshold (at least ``floor``); a uniform view is not split."""
    if float(saturation.max() - saturation.min()) < 1e-3:
        return np.full(saturation.shape, float(saturation.mean()) > floor), None
    from skimage.filters import threshold_otsu

    threshold = max(float(threshold_otsu(saturation)), floor)
    return saturation > threshold, threshold


def _clean(mask: np.ndarray, min_piece: float, min_hole: float) -> np.ndarray:
    """Drop 8-connected pieces smaller than ``min_piece`` mask pixels; fill 4-connected holes smaller than ``min_hole``.

    A hole is background not connected to the view's border.
    """
    from scipy import ndimage

    if min_piece > 1:
        labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes >= min_piece
        keep[0] = False
        mask = keep[labels]
    if min_hole > 1:
        labels, count = ndimage.label(~mask)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        fill = sizes < min_hole
        fill[0] = False
        fill[border] = False
        mask = mask | fill[labels]
    return mask
