"""At what resolution a slide is segmented: the µm/px asked for, else the one the model was trained at.

A model learns the size of cells and glands in pixels; the same tissue scanned at 40x
(0.25 µm/px) is twice as large in pixels as at 20x (0.5 µm/px). :func:`working_view` chooses the
**working resolution** of a prediction and returns the slide seen at it
(:class:`~glmed.io.resampled.ResampledReader`), so the inferer, which counts in pixels, works
unchanged:

- ``mpp`` given: that µm/px; the slide must say its own (an error naming the file otherwise);
- else the checkpoint's ``trained_mpp`` (:class:`~glmed.models.glnet.GLNetConfig`), when the slide
  says its own µm/px; a slide that does not is read at level 0, with a note;
- else level 0, as it is.

Notes say when the working resolution is more than :data:`MPP_NOTE_RATIO` times finer or coarser
than the model's training, and when it is finer than the slide's scan (pixels are interpolated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from glmed.io.base import ImageReader
from glmed.io.resampled import LEVEL_TOLERANCE, ResampledReader
from glmed.io.resolution import microns_per_pixel

MPP_NOTE_RATIO = 1.5
"""A working µm/px this many times finer or coarser than the training's gets a note."""


@dataclass
class WorkingView:
    """The slide as the inferer sees it, and why.

    Attributes:
        reader: the slide itself, or a :class:`~glmed.io.resampled.ResampledReader` of it.
        target: the working µm/px asked for (``mpp`` or the model's), or None for level 0 as is.
        notes: plain-language remarks for the prediction's result.
    """

    reader: ImageReader
    target: float | None = None
    notes: list[str] = field(default_factory=list)


def check_mpp(mpp: float | None) -> float | None:
    """``mpp`` as a float, checked before any work.

    Raises:
        ValueError: a value that is not a positive finite number of µm per pixel.
    """
    if mpp is None:
        return None
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(mpp, bool) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"mpp is the µm per pixel to segment at (0.5 for 20x, 0.25 for 40x), got {mpp!r}")
    return value


def working_view(reader: ImageReader, mpp: float | None, trained_mpp: float | None) -> WorkingView:
    """The slide at the working resolution (see the module docstring).

    Args:
        reader: the slide, open.
        mpp: µm per pixel asked for, or None for the model's.
        trained_mpp: the model's training µm/px (its config's ``trained_mpp``), or None when unknown.

    Raises:
        ValueError: naming the slide, when ``mpp`` is given and the slide does not say its µm/px.
    """
    mpp = check_mpp(mpp)
    if mpp is None and trained_mpp is None:
        return WorkingView(reader)
    source = microns_per_pixel(reader)
    if source is None:
        if mpp is not None:
            raise ValueError(f"{reader.name}: mpp={mpp:g} asks for a resolution, but the file does not say its µm per "
                             "pixel; segment it without mpp (at level 0), or convert it to a format that records it")
        return WorkingView(reader, notes=[f"the model was trained at {trained_mpp:g} µm/px, but {reader.name} does "
                                          "not say its µm per pixel: segmented at level 0, as it is"])
    target = mpp if mpp is not None else float(trained_mpp)  # type: ignore[arg-type]
    view = ResampledReader(reader, target, source)
    notes = []
    if trained_mpp is not None:
        ratio = max(target / trained_mpp, trained_mpp / target)
        if ratio > MPP_NOTE_RATIO:
            side = "coarser" if target > trained_mpp else "finer"
            notes.append(f"segmented at {target:g} µm/px, {ratio:.1f}x {side} than the {trained_mpp:g} µm/px the "
                         "model was trained at: structures look "
                         f"{'smaller' if side == 'coarser' else 'larger'} to it than in training")
    if target * (1 + LEVEL_TOLERANCE) < min(source):
        notes.append(f"segmented at {target:g} µm/px, finer than the slide's scan ({min(source):g} µm/px): its "
                     "pixels were interpolated, which adds no detail")
    return WorkingView(view, target, notes)
