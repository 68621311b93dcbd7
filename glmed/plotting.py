"""Pictures of predictions for notebooks and reports (needs matplotlib: ``pip install glmed[plot]``).

Overlays use the Okabe–Ito palette, which readers with any common colour-vision deficiency can
tell apart: the prediction's outline in vermillion, the ground truth's in sky blue, the boxes
refined at full resolution dashed yellow with a dark edge; a legend names each. Only
:func:`show_result` without an ``ax`` (and :func:`plot_scores` without one) goes through pyplot, to
give a notebook its figure; files and notebook thumbnails are drawn on a bare
:class:`~matplotlib.figure.Figure`.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from glmed.conventions import Size
from glmed.inference.result import SegmentationResult
from glmed.io.base import ImageReader

PREDICTION_COLOUR = "#D55E00"
"""Okabe–Ito vermillion: the predicted mask's outline."""

TRUTH_COLOUR = "#56B4E9"
"""Okabe–Ito sky blue: the ground truth's outline."""

BOX_COLOUR = "#F0E442"
"""Okabe–Ito yellow, dashed over a dark edge: boxes refined at full resolution."""

LABELS = {"prediction": "prediction", "truth": "truth", "box": "refined box"}
"""The legend's words for each overlay."""

MAX_READ_SIDE = 2048
"""Longest side, in pixels, read from an image file for a picture: a slide is never read whole."""


@dataclass
class _Overlay:
    """What to draw, already subsampled: checked sizes, no matplotlib involved yet."""

    picture: np.ndarray
    """The image subsampled for display (``h×w`` or ``h×w×3/4``)."""
    size: Size
    """The full-resolution ``(height, width)``: the coordinates everything is drawn in."""
    rows: np.ndarray
    """Full-resolution row of each row of ``mask`` and ``truth`` (pixel centres)."""
    cols: np.ndarray
    """Full-resolution column of each column of ``mask`` and ``truth`` (pixel centres)."""
    mask: np.ndarray
    """The predicted mask's foreground at ``rows × cols``."""
    truth: np.ndarray | None
    """The truth's foreground at ``rows × cols``, if given."""
    boxes: list[Any]
    """Refined boxes, full-resolution ``(row0, col0, row1, col1)``."""

    @property
    def figsize(self) -> tuple[float, float]:
        """Width and height in inches: 8 on the longer side."""
        height, width = self.size
        return 8 * width / max(height, width), 8 * height / max(height, width)


def show_result(
    image: np.ndarray | str | os.PathLike | ImageReader,
    result: SegmentationResult,
    truth: np.ndarray | None = None,
    ax: Any = None,
    max_side: int = 1600,
    legend: bool = True,
) -> Any:
    """Draw the image with the prediction's outline, the refined boxes and, if given, the truth.

    The prediction's outline is vermillion, the ground truth's sky blue, coarse-to-fine boxes
    dashed yellow (Okabe–Ito colours, distinct for colour-blind readers); a legend below the
    picture names them. Large images are shown subsampled to about ``max_side`` pixels
    (outlines and boxes are drawn in full-resolution coordinates either way). An image given as
    a file is read already downsampled, to at most :data:`MAX_READ_SIDE` pixels on its longer
    side, so a whole slide is never read at full size.

    Args:
        image: the image the result belongs to: an ``H×W×C`` or ``H×W`` array, a file path
            (read with :func:`glmed.io.open_image`), or an open reader.
        result: what :func:`glmed.predict` returned for it.
        truth: ``H×W`` ground-truth class indices, optional (0 is background).
        ax: a matplotlib Axes to draw into; a new figure's by default.
        max_side: longest side, in pixels, of the picture actually drawn; larger images are
            subsampled by a whole step to about this size, which keeps big slides quick to draw.
        legend: whether to name the overlays in a legend below the picture.

    Returns:
        The Axes.

    Raises:
        ValueError: the image, the result's mask and the truth are not all the same size (the
            message gives both sizes), or the image is not an image; checked before anything is
            drawn.
    """
    overlay = _prepare(image, result, truth, max_side)
    if ax is None:
        _, ax = _pyplot().subplots(figsize=overlay.figsize)
    _draw(ax, overlay, legend=legend)
    return ax


def save_result_figure(path: str | os.PathLike, image: np.ndarray | str | os.PathLike | ImageReader,
                       result: SegmentationResult, truth: np.ndarray | None = None, title: str | None = None,
                       max_side: int = 1600) -> None:
    """Write :func:`show_result`'s picture (legend included) to a PNG file, atomically.

    Drawn on a figure of its own, not through pyplot, so nothing is left open or shown.
    ``image``, ``truth`` and ``max_side`` are as for :func:`show_result`.
    """
    from glmed.io.writers import atomic_path

    overlay = _prepare(image, result, truth, max_side)
    figure = _figure(overlay.figsize, dpi=100)
    ax = figure.add_subplot()
    _draw(ax, overlay, legend=True)
    if title:
        ax.set_title(title)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", bbox_inches="tight", dpi=100)


def thumbnail_png(result: SegmentationResult) -> bytes:
    """PNG bytes of ``result.thumbnail`` with the prediction's outline and the refined boxes.

    What a notebook shows for a :class:`~glmed.inference.result.SegmentationResult`. The mask
    is sampled at the thumbnail's pixels (nearest neighbour: only those pixels are read, so a
    memory-mapped slide mask is not loaded); the one-line summary is the picture's title.

    Raises:
        ValueError: the result has no thumbnail.
        ImportError: matplotlib is not installed.
    """
    if result.thumbnail is None:
        raise ValueError("the result has no thumbnail to draw")
    thumbnail = np.asarray(result.thumbnail)
    height, width = result.mask.shape[:2]
    rows = _nearest(thumbnail.shape[0], height)
    cols = _nearest(thumbnail.shape[1], width)
    overlay = _Overlay(picture=_displayable(thumbnail), size=(height, width), rows=rows + 0.5, cols=cols + 0.5,
                       mask=np.asarray(result.mask[np.ix_(rows, cols)]) != 0, truth=None, boxes=list(result.boxes))
    figure = _figure((thumbnail.shape[1] / 100, thumbnail.shape[0] / 100), dpi=100)
    ax = figure.add_axes((0, 0, 1, 1))
    _draw(ax, overlay, legend=True, fontsize=7, linewidth=1.2)
    ax.set_title(result.summary(), fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", pad_inches=0.02)
    return buffer.getvalue()


def plot_scores(per_image: Any, ax: Any = None, bins: int = 20) -> Any:
    """Histogram of per-image thresholded Jaccard, the way the ISIC 2018 Task 1 metric sees it.

    The 0.65 threshold is marked (images left of it score 0) and so is the mean, the headline.

    Args:
        per_image: what :func:`glmed.score_submission` returns (a ``threshold_jaccard`` and a
            ``jaccard`` column).
        ax: a matplotlib Axes to draw into; a new figure's by default.
        bins: number of histogram bins over Jaccard's ``[0, 1]`` range.

    Returns:
        The Axes.
    """
    plt = _pyplot()
    from glmed.metrics.confusion import JACCARD_THRESHOLD

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    jaccard, headline = per_image["jaccard"], per_image["threshold_jaccard"].mean()
    ax.hist(jaccard, bins=bins, range=(0, 1), color="tab:blue", alpha=0.8, label="Jaccard per image")
    ax.axvline(JACCARD_THRESHOLD, color="tab:red", linestyle="--",
               label=f"threshold {JACCARD_THRESHOLD}: below scores 0 ({(jaccard < JACCARD_THRESHOLD).sum()} images)")
    ax.axvline(headline, color="black", label=f"mean thresholded Jaccard {headline:.3f}")
    ax.set_xlabel("Jaccard (IoU)")
    ax.set_ylabel("images")
    ax.legend(loc="upper left", fontsize="small")
    return ax


def _prepare(image: Any, result: SegmentationResult, truth: np.ndarray | None, max_side: int) -> _Overlay:
    """Check the sizes, then subsample image, mask and truth for drawing (no matplotlib yet)."""
    mask = result.mask
    if mask.ndim != 2:
        raise ValueError(f"the result's mask must be H×W class indices, got shape {tuple(mask.shape)}")
    size = (int(mask.shape[0]), int(mask.shape[1]))
    if isinstance(image, (str, os.PathLike, ImageReader)):
        from glmed.io.open import open_as_reader

        reader, opened = open_as_reader(image)
        try:
            _check_size(f"the image {reader.name}", reader.size, size)
            truth = _check_truth(truth, size)
            step = _step(size, min(max_side, MAX_READ_SIDE))
            picture = reader.resized((math.ceil(size[0] / step), math.ceil(size[1] / step)))
        finally:
            if opened:
                reader.close()
    else:
        array = np.asarray(image)
        if array.ndim not in (2, 3) or array.dtype == object:
            raise ValueError(f"the image must be an H×W or H×W×C array, a file path or an ImageReader; got "
                             f"{type(image).__name__} of shape {array.shape}")
        _check_size("the image", array.shape[:2], size)
        truth = _check_truth(truth, size)
        step = _step(size, max_side)
        picture = array[::step, ::step]
    rows, cols = np.arange(0, size[0], step), np.arange(0, size[1], step)
    return _Overlay(picture=_displayable(picture), size=size, rows=rows + 0.5, cols=cols + 0.5,
                    mask=np.asarray(mask[::step, ::step]) != 0,
                    truth=None if truth is None else np.asarray(truth[::step, ::step]) != 0,
                    boxes=list(result.boxes))


def _check_size(what: str, found: Any, mask_size: Size) -> None:
    if tuple(int(v) for v in found) != tuple(mask_size):
        raise ValueError(f"{what} is {_hw(found)} but the result's mask is {_hw(mask_size)} (height×width): pass "
                         "the image the result was predicted from, at full resolution")


def _check_truth(truth: np.ndarray | None, mask_size: Size) -> np.ndarray | None:
    """``truth`` as an ``H×W`` array of the mask's size, or a ValueError saying what is wrong."""
    if truth is None:
        return None
    truth = np.asarray(truth)
    if truth.ndim == 3 and truth.shape[2] == 1:
        truth = truth[..., 0]
    if truth.ndim != 2:
        raise ValueError(f"the truth must be an H×W mask of class indices, got shape {truth.shape}")
    if truth.shape != tuple(mask_size):
        raise ValueError(f"the truth is {_hw(truth.shape)} but the result's mask is {_hw(mask_size)} "
                         "(height×width): give the ground truth of the same image, at full resolution")
    return truth


def _hw(size: Any) -> str:
    return f"{int(size[0])}×{int(size[1])}"


def _step(size: Size, max_side: int) -> int:
    """The whole subsampling step that brings the longer side of ``size`` to about ``max_side``."""
    return max(1, math.ceil(max(size) / max(1, int(max_side))))


def _nearest(count: int, full: int) -> np.ndarray:
    """The full-resolution index nearest to the centre of each of ``count`` pixels spanning ``full``."""
    return np.minimum(((np.arange(count) + 0.5) * full / count).astype(np.int64), full - 1)


def _displayable(picture: np.ndarray) -> np.ndarray:
    """The picture as matplotlib draws it faithfully: 8-bit RGB where it converts, else one grey channel."""
    from glmed.io.convert import to_rgb8

    if picture.ndim == 3 and picture.shape[2] == 1:
        picture = picture[..., 0]
    if picture.ndim == 2:
        return picture
    try:
        return to_rgb8(picture)
    except ValueError:
        return picture[..., 0]


def _draw(ax: Any, overlay: _Overlay, legend: bool, fontsize: Any = "small", linewidth: float = 1.5) -> None:
    """Draw the picture, outlines, boxes and (optionally) a legend below, in full-resolution coordinates."""
    from matplotlib import patheffects
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    height, width = overlay.size
    picture = overlay.picture
    ax.imshow(picture, extent=(0, width, height, 0), cmap="gray" if picture.ndim == 2 else None)
    drawable = overlay.mask.shape[0] >= 2 and overlay.mask.shape[1] >= 2  # contour needs 2×2 at least
    handles = [Line2D([], [], color=PREDICTION_COLOUR, linewidth=2, label=LABELS["prediction"])]
    if overlay.truth is not None:
        if drawable:
            ax.contour(overlay.cols, overlay.rows, overlay.truth, levels=[0.5], colors=[TRUTH_COLOUR],
                       linewidths=linewidth)
        handles.append(Line2D([], [], color=TRUTH_COLOUR, linewidth=2, label=LABELS["truth"]))
    if drawable:
        ax.contour(overlay.cols, overlay.rows, overlay.mask, levels=[0.5], colors=[PREDICTION_COLOUR],
                   linewidths=linewidth)
    edge = [patheffects.withStroke(linewidth=linewidth + 2, foreground="black")]
    for r0, c0, r1, c1 in overlay.boxes:
        ax.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, edgecolor=BOX_COLOUR, linestyle="--",
                               linewidth=linewidth, path_effects=edge))
    if overlay.boxes:
        handles.append(Line2D([], [], color=BOX_COLOUR, linestyle="--", linewidth=2, path_effects=edge,
                              label=LABELS["box"]))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    if legend:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles),
                  frameon=False, fontsize=fontsize, handlelength=2.5, borderaxespad=0.3)


def _figure(figsize: tuple[float, float], dpi: int) -> Any:
    """A matplotlib Figure with an Agg canvas, outside pyplot (no backend or current figure touched)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("drawing needs matplotlib: pip install 'glmed[plot]'") from error
    figure = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("drawing needs matplotlib: pip install 'glmed[plot]'") from error
    return plt
