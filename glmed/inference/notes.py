"""What a careful user would want to know about one prediction, in plain words.

A segmentation can be wrong in ways the mask alone does not show: a model that marks almost
every pixel as lesion is usually untrained or meets images unlike its training data; a
coarse-to-fine mask that runs into a side of its box (where the box is not at the image's
border) was probably cut there, because everything outside the box is background; an image
far larger or smaller than the training images is seen at another scale. Each check here
returns sentences for ``SegmentationResult.notes`` (and the CLI's summary), never raises,
and reads a mask that may live on disk a band of rows at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from glmed.conventions import Box, Size
from glmed.io.mapped import row_bands

MOSTLY_FOREGROUND = 0.95
"""Above this fraction of foreground pixels a prediction gets a note."""

HARDLY_FOREGROUND = 0.001
"""Below this fraction (but above none) of foreground pixels a prediction gets a note."""

EDGE_CONTACT = 0.02
"""A box side counts as cutting the mask when foreground covers more than this fraction of it."""

SIZE_FACTOR = 4.0
"""An image whose longer side is this many times larger or smaller than the training images' gets a note."""

_BAND_BYTES = 16 << 20
"""Bytes read at a time when counting a mask that may be memory-mapped from disk."""


def foreground_fraction(mask: np.ndarray) -> float:
    """Fraction of pixels with a class other than 0 (background), counted a band of rows at a time.

    A memory-mapped mask's pages are released after each band (:func:`~glmed.io.mapped.row_bands`),
    so counting a slide's mask does not leave the whole file in the resident set.
    """
    total = mask.shape[0] * mask.shape[1]
    if not total:
        return 0.0
    return sum(int(np.count_nonzero(mask[band])) for band in row_bands(mask, _BAND_BYTES)) / total


def cover_notes(fraction: float) -> list[str]:
    """A note when the foreground covers nearly all or almost none (but some) of the image."""
    if fraction > MOSTLY_FOREGROUND:
        return [f"the mask covers {100 * fraction:.1f}% of the image: a model this sure that almost everything "
                "is foreground is usually untrained, or sees images unlike its training data; check it on an "
                "image whose answer you know"]
    if 0 < fraction < HARDLY_FOREGROUND:
        return [f"the mask covers only {100 * fraction:.3f}% of the image: specks this small are more often "
                "noise than findings"]
    return []


def cut_sides(mask: np.ndarray, box: Box, image_size: Size) -> dict[str, float]:
    """The sides of ``box``, away from the image border, that the mask runs into, with its share of each.

    A side counts when foreground covers more than :data:`EDGE_CONTACT` of its pixels (the row
    or column just inside the box). Only the four lines are read, so ``mask`` may live on disk.

    Returns:
        ``{"top" | "bottom" | "left" | "right": fraction of that side that is foreground}``.
    """
    height, width = image_size
    r0, c0, r1, c1 = (int(v) for v in box)
    # (side, whether it lies inside the image, the mask's pixels along it)
    sides = (("top", r0 > 0, (r0, slice(c0, c1))), ("bottom", r1 < height, (r1 - 1, slice(c0, c1))),
             ("left", c0 > 0, (slice(r0, r1), c0)), ("right", c1 < width, (slice(r0, r1), c1 - 1)))
    cut = {}
    for name, inside_image, line in sides:
        if not inside_image:
            continue
        pixels = np.asarray(mask[line])
        share = float(np.count_nonzero(pixels)) / max(len(pixels), 1)
        if share > EDGE_CONTACT:
            cut[name] = share
    return cut


def box_edge_notes(mask: np.ndarray, boxes: Sequence[Box], image_size: Size, grew: bool = False) -> list[str]:
    """A note for each coarse-to-fine box side, away from the image border, that the mask runs into.

    Outside its boxes a coarse-to-fine mask is background, so foreground along such a side means
    the lesion probably goes on beyond the box and was cut there. ``grew``: the boxes are what
    box growth (``grow_boxes``) left after its last round, so the note says its limit was reached.
    """
    notes = []
    for box in boxes:
        cut = [f"{name} ({100 * share:.0f}% of it)" for name, share in cut_sides(mask, box, image_size).items()]
        if not cut:
            continue
        hint = ("box growth stopped at its grow_boxes limit: more rounds let it grow further" if grew else
                "grow_boxes=2 grows the box there and refines it again; a larger target_ratio or "
                "per_component=False gives a looser box")
        notes.append(f"the mask runs into the {', '.join(cut)} side(s) of its box {tuple(box)}: the lesion "
                     f"probably continues outside the box, where everything is background; {hint}")
    return notes


def size_notes(image_size: Size, trained_size: Sequence[int] | None) -> list[str]:
    """A note when the image is far larger or smaller than the images the model was trained on."""
    if not trained_size:
        return []
    seen, trained = max(image_size), max(int(v) for v in trained_size)
    if trained <= 0 or (1 / SIZE_FACTOR) <= seen / trained <= SIZE_FACTOR:
        return []
    return [f"the image is {image_size[0]}×{image_size[1]}, its longer side {seen / trained:.1f}× that of the "
            f"training images (typically {trained_size[0]}×{trained_size[1]}): structures appear at another "
            "scale than the model learned, so expect a weaker result"]


def refine_notes(refined: int, skipped: int, margin: float | None, boxes: int | None) -> list[str]:
    """What ``refine="uncertain"`` did: how many patches the local branch ran on, and why the others not.

    Args:
        refined: patches the local branch processed.
        skipped: patches that took the global branch's answer.
        margin: the confidence margin used, or None (the one-class rule alone).
        boxes: how many coarse-to-fine boxes were refined; None for a plain GLNet (the whole image).
    """
    total = refined + skipped
    if not total:
        return []
    where = "in the image" if boxes is None else ("in the box" if boxes == 1 else f"in the {boxes} boxes")
    rule = "one class throughout"
    if margin is not None:
        rule = f"top-class probability ≥ {1 - margin:g} and {rule}"
    return [f"refined {refined} of {total} patches {where}; {skipped} took the global branch's answer "
            f"(confident: {rule}, a map pixel beyond the patch included)"]
