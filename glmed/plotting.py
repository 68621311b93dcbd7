"""Pictures of predictions for notebooks and reports (needs matplotlib: ``pip install glmed[plot]``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from glmed.inference.inferer import SegmentationResult


def show_result(
    image: np.ndarray,
    result: SegmentationResult,
    truth: np.ndarray | None = None,
    ax: Any = None,
    max_side: int = 1600,
) -> Any:
    """Draw the image with the prediction's outline, the refined boxes and, if given, the truth.

    Prediction outlines are red, ground truth green, coarse-to-fine boxes dashed yellow.
    Large images are shown subsampled to about ``max_side`` pixels (outlines and boxes
    are drawn in full-resolution coordinates either way).

    Args:
        image: ``H×W×C`` or ``H×W`` array the result belongs to.
        result: what :func:`glmed.predict` returned for it.
        truth: ``H×W`` ground-truth mask, optional.
        ax: a matplotlib Axes to draw into; a new figure's by default.
        max_side: longest side, in pixels, of the picture actually drawn; larger images are
            subsampled by a whole step to about this size, which keeps big slides quick to draw.

    Returns:
        The Axes.
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    image = np.asarray(image)
    if image.shape[:2] != result.mask.shape:
        raise ValueError(f"image is {image.shape[:2]} but the result's mask is {result.mask.shape}")
    step = max(1, int(np.ceil(max(image.shape[:2]) / max_side)))
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 8 * image.shape[0] / image.shape[1]))
    height, width = image.shape[:2]
    extent = (0, width, height, 0)
    ax.imshow(image[::step, ::step], extent=extent, cmap="gray" if image.ndim == 2 else None)
    rows, cols = np.arange(0, height, step), np.arange(0, width, step)
    if truth is not None:
        ax.contour(cols, rows, (np.asarray(truth)[::step, ::step] != 0), levels=[0.5], colors="lime", linewidths=1)
    ax.contour(cols, rows, result.mask[::step, ::step] != 0, levels=[0.5], colors="red", linewidths=1)
    for r0, c0, r1, c1 in result.boxes:
        ax.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, edgecolor="yellow", linestyle="--"))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    return ax


def save_result_figure(path: str | os.PathLike, image: np.ndarray, result: SegmentationResult,
                       truth: np.ndarray | None = None, title: str | None = None) -> None:
    """Write :func:`show_result`'s picture to a PNG file, atomically."""
    plt = _pyplot()
    from glmed.io.writers import atomic_path

    ax = show_result(image, result, truth)
    if title:
        ax.set_title(title)
    with atomic_path(path) as temporary:
        ax.figure.savefig(temporary, format="png", bbox_inches="tight", dpi=100)
    plt.close(ax.figure)


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


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("drawing needs matplotlib: pip install 'glmed[plot]'") from error
    return plt
