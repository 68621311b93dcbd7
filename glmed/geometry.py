"""Patch grids and the coordinate maps between a full-resolution image, its downsampled
global view and the feature maps of both branches.

GLNet tiles an image with equally sized patches that overlap by at least a minimum
amount and whose last row/column sits flush with the image border (no padding past
it). Every other part of glmed (sampler, inferer, stitching) takes its boxes from here,
so training and inference see the same grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from glmed.types import Box, FloatBox, Size


def axis_starts(length: int, patch: int, min_overlap: int) -> List[int]:
    """Start offsets of patches tiling one axis.

    The count starts at ``ceil(length / patch)`` and grows until neighbouring patches
    overlap by at least ``min_overlap`` pixels; starts are spread evenly, the first at 0
    and the last at ``length - patch``. When the axis is no longer than a patch, one
    patch (clipped to the axis by :func:`patch_size_for`) covers it.

    Args:
        length: axis length in pixels (>= 1).
        patch: patch length in pixels (>= 1).
        min_overlap: the smallest overlap allowed between neighbours, ``0 <= min_overlap < patch``.
    """
    if length < 1 or patch < 1:
        raise ValueError(f"axis length and patch size must be positive, got {length} and {patch}")
    if not 0 <= min_overlap < patch:
        raise ValueError(f"overlap must be in [0, patch size {patch}), got {min_overlap}")
    if length <= patch:
        return [0]
    count = math.ceil(length / patch)
    while count > 1 and patch - (length - patch) / (count - 1) < min_overlap:
        count += 1
    stride = (length - patch) / (count - 1)
    return [int(round(i * stride)) for i in range(count)]


def patch_size_for(image_size: Size, patch_size: Size) -> Size:
    """The patch size actually used on an image: the requested one, clipped to the image.

    An image no larger than a patch along an axis is covered by one patch of the image's
    own length there, so nothing is padded and nothing divides by zero.
    """
    return (min(image_size[0], patch_size[0]), min(image_size[1], patch_size[1]))


@dataclass(frozen=True)
class PatchGrid:
    """The patches that tile an image (or a box inside it), in crop order (row-major).

    Attributes:
        image_size: ``(height, width)`` of the full-resolution image.
        boxes: ``N x 4`` int64 array of ``(row0, col0, row1, col1)`` in image pixels.
    """

    image_size: Size
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def patch_size(self) -> Size:
        """``(height, width)`` shared by every patch of this grid."""
        box = self.boxes[0]
        return (int(box[2] - box[0]), int(box[3] - box[1]))

    def normalized(self) -> np.ndarray:
        """Boxes as fractions of the image, ``N x 4`` float64: the same on any map of the image."""
        return normalize_boxes(self.boxes, self.image_size)


def patch_grid(
    image_size: Size,
    patch_size: int | Size = 508,
    overlap: int = 50,
    region: Box | None = None,
) -> PatchGrid:
    """Tile an image, or a region of it, with overlapping patches that cover every pixel.

    Args:
        image_size: ``(height, width)`` of the full-resolution image.
        patch_size: patch side, or ``(height, width)``.
        overlap: minimum overlap in pixels between neighbouring patches.
        region: tile only this box of the image (coarse-to-fine); the whole image by default.
    """
    height, width = _checked_size(image_size, "image size")
    requested = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    requested = _checked_size(requested, "patch size")
    if not 0 <= overlap < min(requested):
        raise ValueError(f"overlap must be in [0, patch size {min(requested)}), got {overlap}")
    region = (0, 0, height, width) if region is None else tuple(int(v) for v in region)
    r0, c0, r1, c1 = region
    if not (0 <= r0 < r1 <= height and 0 <= c0 < c1 <= width):
        raise ValueError(f"region {region} is not a non-empty box inside an image of size {(height, width)}")
    ph, pw = patch_size_for((r1 - r0, c1 - c0), requested)
    rows = [r0 + s for s in axis_starts(r1 - r0, ph, min(overlap, ph - 1))]
    cols = [c0 + s for s in axis_starts(c1 - c0, pw, min(overlap, pw - 1))]
    boxes = np.array([(r, c, r + ph, c + pw) for r in rows for c in cols], dtype=np.int64)
    return PatchGrid(image_size=(height, width), boxes=boxes)


def normalize_boxes(boxes: np.ndarray | Sequence[Box], image_size: Size) -> np.ndarray:
    """Pixel boxes as fractions of the image size, ``N x 4`` float64."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([image_size[0], image_size[1], image_size[0], image_size[1]], dtype=np.float64)
    return boxes / scale


def map_box(box: Box | FloatBox, from_size: Size, to_size: Size) -> FloatBox:
    """Where a box on one grid lies on another grid of the same image, in continuous coordinates.

    Used to find a patch's place on the global image or on any feature map, and back.
    """
    sr = to_size[0] / from_size[0]
    sc = to_size[1] / from_size[1]
    return (box[0] * sr, box[1] * sc, box[2] * sr, box[3] * sc)


def footprint(box: Box | FloatBox, from_size: Size, to_size: Size) -> Box:
    """The whole-pixel region a box covers on a coarser grid: rounded, clamped, never empty."""
    r0, c0, r1, c1 = map_box(box, from_size, to_size)
    height, width = to_size
    top = min(max(int(math.floor(r0 + 0.5)), 0), height - 1)
    left = min(max(int(math.floor(c0 + 0.5)), 0), width - 1)
    bottom = max(min(int(math.floor(r1 + 0.5)), height), top + 1)
    right = max(min(int(math.floor(c1 + 0.5)), width), left + 1)
    return (top, left, bottom, right)


def box_size(box: Box) -> Size:
    """``(height, width)`` of a box."""
    return (int(box[2] - box[0]), int(box[3] - box[1]))


def _checked_size(size: Sequence[int], what: str) -> Tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"{what} must be two positive integers (height, width), got {tuple(size)}")
    return (int(size[0]), int(size[1]))
