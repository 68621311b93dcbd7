"""What a prediction returns: the mask, the coarse mask, the refined boxes, the work done, notes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from glmed.conventions import Box
from glmed.inference.notes import foreground_fraction

THUMBNAIL_SIDE = 256
"""Longer side, in pixels, of the thumbnail a prediction keeps for display."""


def thumbnail_size(image_size: tuple[int, int], side: int = THUMBNAIL_SIDE) -> tuple[int, int]:
    """``(height, width)`` of a thumbnail of at most ``side`` pixels on its longer side, same aspect."""
    height, width = image_size
    scale = min(1.0, side / max(height, width, 1))
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass(repr=False)
class SegmentationResult:
    """What :func:`predict` returns for one image.

    ``repr(result)`` is one line (size, foreground share, boxes, patches, notes), never the
    arrays; in a notebook the result shows as a small picture of its thumbnail with the
    prediction's outline and the refined boxes (when a thumbnail was made and matplotlib is
    installed). Print ``result.notes`` for the remarks themselves.

    Attributes:
        mask: ``H×W`` full-resolution class indices (uint8).
        coarse: ``H×W`` mask from the global branch alone (None for ``local_only``, or when
            not asked for).
        boxes: regions refined at full resolution by coarse-to-fine models,
            ``(row0, col0, row1, col1)`` end-exclusive; empty for plain GLNet.
        patches: how many full-resolution patches the local branch processed (a
            bidirectional pass runs each twice and counts it once).
        notes: plain-language remarks about this prediction.
        thumbnail: the image downsampled to at most :data:`THUMBNAIL_SIDE` pixels on its
            longer side (``h×w×C`` as read), for a quick look; None when not made.
        patches_skipped: patches of the refined regions that took the global branch's answer
            instead of the local branch's (``refine="uncertain"``); 0 with ``refine="box"``.
        patches_glass: patches left out because they hold no tissue (a ``tissue`` mask was given):
            never read, they answer background. ``patches + patches_skipped + patches_glass`` is
            every patch of the refined regions (of the part a resumed run computed).
    """

    mask: np.ndarray
    coarse: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)
    patches: int = 0
    notes: list[str] = field(default_factory=list)
    thumbnail: np.ndarray | None = field(default=None, repr=False)
    patches_skipped: int = 0
    patches_glass: int = 0

    def summary(self) -> str:
        """One line: size, foreground share, boxes refined, patches (and those skipped), notes (no array contents).

        The foreground is counted a band of rows at a time, so a memory-mapped mask of a slide
        is never loaded whole.
        """
        height, width = self.mask.shape[:2]
        return (f"{height}×{width}, foreground {_percent(foreground_fraction(self.mask))}, "
                f"{_count(len(self.boxes), 'box', 'boxes')}, {_count(self.patches, 'patch', 'patches')}, "
                + (f"{self.patches_skipped} skipped, " if self.patches_skipped else "")
                + (f"{self.patches_glass} skipped as glass, " if self.patches_glass else "")
                + f"{_count(len(self.notes), 'note', 'notes')}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.summary()})"

    def _repr_png_(self) -> bytes | None:
        """PNG of the thumbnail with the prediction's outline and the boxes, for notebooks.

        None (IPython then shows the one-line repr) when no thumbnail was made or matplotlib is
        missing. Drawn on its own :class:`~matplotlib.figure.Figure`, never through pyplot, so
        the notebook's backend and current figure are left alone.
        """
        if self.thumbnail is None:
            return None
        try:
            from glmed.plotting import thumbnail_png
        except ImportError:  # pragma: no cover - glmed.plotting itself imports matplotlib lazily
            return None
        try:
            return thumbnail_png(self)
        except ImportError:
            return None


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"


def _percent(fraction: float) -> str:
    """A share as a percentage with one decimal, never rounding some foreground to 0% or 100%."""
    if 0 < fraction < 0.0005:
        return "<0.1%"
    if 0.9995 < fraction < 1:
        return ">99.9%"
    return f"{100 * fraction:.1f}%"
