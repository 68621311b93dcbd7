"""Patch grids and the coordinate maps between a full-resolution image, its global view and feature maps.

The global view is the downsampled whole image; the feature maps are both branches'.

GLNet tiles an image with equally sized patches that overlap by at least a minimum
amount and whose last row/column sits flush with the image border (no padding past
it). Every other part of glmed (sampler, inferer, stitching) takes its boxes from here,
so training and inference see the same grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from glmed.conventions import Box, FloatBox, Size


def axis_starts(length: int, patch: int, min_overlap: int) -> list[int]:
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
    r0, c0, r1, c1 = (0, 0, height, width) if region is None else (int(v) for v in region)
    region = (r0, c0, r1, c1)
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


def map_box(box: Box | FloatBox, from_size: tuple[float, float], to_size: tuple[float, float]) -> FloatBox:
    """Where a box on one grid lies on another grid of the same image, in continuous coordinates.

    Used to find a patch's place on the global image or on any feature map, and back. A
    grid's size may be fractional: ``(1.0, 1.0)`` for boxes given as fractions of the image.
    """
    sr = to_size[0] / from_size[0]
    sc = to_size[1] / from_size[1]
    return (box[0] * sr, box[1] * sc, box[2] * sr, box[3] * sc)


def footprint(box: Box | FloatBox, from_size: tuple[float, float], to_size: Size) -> Box:
    """The whole-pixel region a box covers on a coarser grid: rounded, clamped, never empty.

    ``from_size`` may be ``(1.0, 1.0)`` for a box given as fractions of the image.
    """
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


def _checked_size(size: Sequence[int], what: str) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"{what} must be two positive integers (height, width), got {tuple(size)}")
    return (int(size[0]), int(size[1]))


# -- coarse-to-fine boxes ---------------------------------------------------------------


def tight_box(mask: np.ndarray) -> Box | None:
    """The smallest box holding every non-zero pixel of an ``H×W`` mask; None if there is none."""
    mask = np.asarray(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def relax_box(mask: np.ndarray, box: Box, target_ratio: float = 1.0, step: int = 1) -> Box:
    """Grow a box until foreground : background inside it is at most ``target_ratio``.

    The rule, exactly: while ``foreground > target_ratio × background`` inside the box and
    the box is not yet the whole mask, every edge moves outward by ``step`` pixels, an
    edge that reaches the border staying there while the others go on. Growth is
    symmetric, so the box stays centred on the lesion until a border stops it. A box
    already at or below the ratio is returned unchanged; a mask more than
    ``target_ratio / (1 + target_ratio)`` foreground ends at the whole mask. Foreground
    is counted from ``mask`` itself at every step (other lesions entering count too).

    Args:
        mask: ``h×w`` foreground mask (non-zero = foreground), the grid ``box`` is on.
        box: ``(row0, col0, row1, col1)`` on that grid.
        target_ratio: foreground : background to reach (1.0 = the paper's 1:1).
        step: pixels each edge moves per step.
    """
    if not target_ratio > 0:
        raise ValueError(f"target_ratio must be positive, got {target_ratio}")
    if step < 1:
        raise ValueError(f"step must be at least 1 pixel, got {step}")
    mask = np.asarray(mask) != 0
    height, width = mask.shape
    integral = np.zeros((height + 1, width + 1), dtype=np.int64)
    integral[1:, 1:] = mask.cumsum(0).cumsum(1)
    r0, c0, r1, c1 = (int(v) for v in box)
    while True:
        foreground = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        background = (r1 - r0) * (c1 - c0) - foreground
        if foreground <= target_ratio * background or (r0, c0, r1, c1) == (0, 0, height, width):
            return (r0, c0, r1, c1)
        r0, c0 = max(r0 - step, 0), max(c0 - step, 0)
        r1, c1 = min(r1 + step, height), min(c1 + step, width)


def merge_overlapping(boxes: Sequence[Box]) -> list[Box]:
    """Replace every group of overlapping boxes by their common bounding box, until none overlap."""
    merged: list[Box] = [(int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in boxes]
    changed = True
    while changed:
        changed = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                a, b = merged[i], merged[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    merged[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del merged[j]
                    changed = True
                    break
            if changed:
                break
    return sorted(merged)


def scale_box_outward(box: Box, from_size: Size, to_size: Size) -> Box:
    """A box on a coarse grid mapped to a finer one, rounded outward so it covers every pixel."""
    r0, c0, r1, c1 = map_box(box, from_size, to_size)
    return (
        max(int(math.floor(r0 + 1e-9)), 0),
        max(int(math.floor(c0 + 1e-9)), 0),
        min(int(math.ceil(r1 - 1e-9)), to_size[0]),
        min(int(math.ceil(c1 - 1e-9)), to_size[1]),
    )


def grow_to_size(box: Box, size: Size, image_size: Size) -> Box:
    """Grow a box about its centre to at least ``size``, never past the image.

    A box that would leave the image is shifted inside it rather than shrunk.
    """
    out = []
    for axis in range(2):
        start, stop = int(box[axis]), int(box[axis + 2])
        length = min(max(stop - start, int(size[axis])), int(image_size[axis]))
        grow = length - (stop - start)
        start = min(max(start - grow // 2, 0), int(image_size[axis]) - length)
        out.append((start, start + length))
    return (out[0][0], out[1][0], out[0][1], out[1][1])


def coarse_to_fine_boxes(
    mask: np.ndarray,
    image_size: Size,
    target_ratio: float = 1.0,
    min_size: Size = (1, 1),
    per_component: bool = False,
    min_component: float = 0,
) -> list[Box]:
    """The full-resolution regions coarse-to-fine refines, from a coarse foreground mask.

    1. Specks smaller than ``min_component`` are dropped (:func:`drop_specks`).
    2. Boxes on the mask's grid: one tight box around all foreground (default), or one per
       8-connected component with ``per_component``.
    3. Each is relaxed with :func:`relax_box` to ``target_ratio`` foreground : background.
    4. Mapped to ``image_size`` outward, grown to at least ``min_size`` (one patch), and
       overlapping boxes merged.

    Returns:
        Disjoint ``(row0, col0, row1, col1)`` boxes in image pixels, sorted; empty when the
        mask has no foreground (or only specks).
    """
    mask = np.asarray(mask) != 0
    grid_size = (int(mask.shape[0]), int(mask.shape[1]))
    if min_component:
        mask = drop_specks(mask, image_size, min_component)
    if per_component:
        from scipy import ndimage

        labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        tight: list[Box | None] = [
            (s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndimage.find_objects(labels) if s
        ]
    else:
        tight = [tight_box(mask)]
    boxes = [relax_box(mask, box, target_ratio) for box in tight if box is not None]
    boxes = [grow_to_size(scale_box_outward(b, grid_size, image_size), min_size, image_size) for b in boxes]
    return merge_overlapping(boxes)


def component_threshold(min_component: float, image_size: Size) -> float:
    """``min_component`` as image pixels: a count of pixels when at least 1, a fraction of the image below 1."""
    if min_component < 0:
        raise ValueError(f"min_component must be >= 0 (image pixels, or a fraction of the image below 1), "
                         f"got {min_component}")
    return float(min_component) if min_component >= 1 else float(min_component) * image_size[0] * image_size[1]


def drop_specks(mask: np.ndarray, image_size: Size, min_component: float) -> np.ndarray:
    """The ``h×w`` coarse mask without its 8-connected components smaller than ``min_component``.

    A component's size is counted in image pixels (its grid pixels times the image pixels a grid
    pixel stands for), so the threshold does not depend on the global branch's resolution.

    Args:
        mask: coarse foreground mask, on a grid covering the image of ``image_size``.
        image_size: ``(height, width)`` of the full-resolution image.
        min_component: image pixels (at least 1), or a fraction of the image's area (below 1).
    """
    from scipy import ndimage

    mask = np.asarray(mask) != 0
    threshold = component_threshold(min_component, image_size)
    if threshold <= 0 or not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    per_grid_pixel = image_size[0] * image_size[1] / (mask.shape[0] * mask.shape[1])
    sizes = np.bincount(labels.ravel(), minlength=count + 1) * per_grid_pixel
    keep = sizes >= threshold
    keep[0] = False
    return keep[labels]
