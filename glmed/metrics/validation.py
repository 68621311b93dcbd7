"""Validation metrics as counts per image, then one reduction: ISIC thresholded Jaccard, mean IoU.

A metric measures one image (truth and prediction as class-index arrays) into a small,
picklable count — confusion counts for ISIC, a confusion matrix for mIoU — and reduces a
list of those to named scores, the headline (:attr:`Metric.name`, higher is better) among
them. Counting first lets several processes each validate their share of the images and
reduce together (:func:`glmed.training.evaluate.evaluate`), and gives the same numbers as
scoring in one place (:func:`score_table`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

import numpy as np
import pandas as pd

from glmed.metrics.confusion import BinaryCounts, binary_counts, binary_metrics
from glmed.metrics.multiclass import ConfusionMatrix


class Metric(Protocol):
    """What evaluation and the runner need of a metric."""

    name: str
    """The headline score's key in :meth:`reduce`'s result; higher is better."""

    def measure(self, truth: np.ndarray, prediction: np.ndarray) -> Any:
        """One image's counts (``H×W`` class indices each)."""

    def reduce(self, stats: Sequence[Any]) -> dict[str, float]:
        """Named scores of many images' counts."""


class IsicMetric:
    """The ISIC 2018 Task 1 metrics (foreground = any class but 0), means over images.

    The headline is the thresholded Jaccard, the challenge's ranking metric; the numbers
    are those of the official scorer (:mod:`glmed.metrics.confusion`).
    """

    name = "threshold_jaccard"

    def measure(self, truth: np.ndarray, prediction: np.ndarray) -> tuple[int, int, int, int]:
        """One image's ``(tp, fp, fn, tn)`` pixel counts, foreground being any non-zero class."""
        counts = binary_counts((np.asarray(truth) != 0).view(np.uint8) * 255,
                               (np.asarray(prediction) != 0).view(np.uint8) * 255)
        # One image's counts are Python ints; BinaryCounts' fields are typed for arrays of them too.
        return cast("tuple[int, int, int, int]", tuple(counts))

    def reduce(self, stats: Sequence[tuple[int, int, int, int]]) -> dict[str, float]:
        """Each ISIC metric averaged over the images (the challenge scores images, then means them)."""
        if not stats:
            raise ValueError("no images to score")
        counts = BinaryCounts(*np.asarray(stats, dtype=np.int64).T)
        return {name: float(values.mean()) for name, values in binary_metrics(counts).items()}


class MeanIoUMetric:
    """Mean IoU over classes from one confusion matrix summed over all images.

    The paper's DeepGlobe and Inria metric; also reports each class's IoU as ``iou_<class>``.

    Args:
        class_names: one name per class, in class-index order.
        ignore_index: a class left out of the mean and whose truth pixels are not counted
            (DeepGlobe's ``unknown``), or None.
    """

    name = "miou"

    def __init__(self, class_names: Sequence[str], ignore_index: int | None = None) -> None:
        self.class_names = tuple(class_names)
        self.ignore_index = ignore_index

    def measure(self, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
        """One image's ``K×K`` confusion matrix (``ignore_index`` truth pixels left out)."""
        matrix = ConfusionMatrix(len(self.class_names), self.ignore_index)
        matrix.update(truth, prediction)
        return matrix.matrix

    def reduce(self, stats: Sequence[np.ndarray]) -> dict[str, float]:
        """Mean and per-class IoU of the images' matrices summed (not per-image IoUs averaged)."""
        if not len(stats):
            raise ValueError("no images to score")
        total = ConfusionMatrix(len(self.class_names), self.ignore_index)
        total.matrix = np.sum(stats, axis=0)
        scores = {"miou": total.mean_iou()}
        for index, (name, iou) in enumerate(zip(self.class_names, total.iou(), strict=True)):
            if index != self.ignore_index:
                scores[f"iou_{name}"] = float(iou)
        return scores


def score_table(metric: Metric, stats: Sequence[Any], index: Sequence[Any] | None = None) -> pd.DataFrame:
    """One row of ``metric``'s scores per image's counts, and the scores of all of them together.

    The latter are in ``attrs["summary"]`` (a mean over images for ISIC, one summed
    confusion matrix for mIoU).

    Args:
        metric: what to score with.
        stats: each image's counts from :meth:`Metric.measure`.
        index: a label per row (e.g. image ids), or None for 0, 1, ...
    """
    table = pd.DataFrame([metric.reduce([item]) for item in stats], index=index)
    table.attrs["summary"] = metric.reduce(stats)
    return table
