"""Binary confusion counts and the ISIC 2018 Task 1 metrics as reductions of them.

Counting and reducing are separate steps: the scorer counts TP/FP/FN/TN once per image (from
files, in :mod:`glmed.metrics.isic`, or from arrays with :func:`binary_counts`), and every metric
is a vectorised function of those counts. The reductions reproduce the official
``isic-challenge-scoring`` 5.x definitions exactly, including its conventions for empty masks:

* Jaccard ``TP / (TP + FP + FN)`` and Dice ``2TP / (2TP + FP + FN)`` are 1.0 when truth and
  prediction are both empty;
* thresholded Jaccard is the Jaccard when it is at least 0.65, else 0.0;
* sensitivity ``TP / (TP + FN)`` is 1.0 when the truth is empty; specificity
  ``TN / (TN + FP)`` is 1.0 when the truth covers the whole image;
* accuracy is ``(TP + TN) / (TP + TN + FP + FN)``.

Divisions are done on 64-bit integer counts promoted to float64, as the official package does,
so the numbers are bit-for-bit the official ones.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

#: Pixel values strictly above this are foreground, on truth and prediction alike.
FOREGROUND_ABOVE = 128
#: Thresholded Jaccard scores an image 0 when its Jaccard is below this.
JACCARD_THRESHOLD = 0.65
#: Metric names in the order of the per-image table.
METRICS = ("jaccard", "threshold_jaccard", "dice", "sensitivity", "specificity", "accuracy")


class BinaryCounts(NamedTuple):
    """Confusion counts of one image (ints) or of many images (int64 arrays of equal length)."""

    tp: npt.ArrayLike
    fp: npt.ArrayLike
    fn: npt.ArrayLike
    tn: npt.ArrayLike


def binary_counts(truth: npt.ArrayLike, prediction: npt.ArrayLike) -> BinaryCounts:
    """Count TP/FP/FN/TN of two equally shaped masks with the official foreground rule (> 128).

    Use this for masks already in memory (for example a model's output scaled to 0/255); folders
    of files go through :func:`glmed.metrics.isic.score_submission`.

    Args:
        truth: ground-truth mask, any shape, values 0-255.
        prediction: predicted mask of the same shape.

    Returns:
        The four counts as Python ints.
    """
    truth = np.asarray(truth)
    prediction = np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise ValueError(
            f"truth has shape {truth.shape} but prediction has shape {prediction.shape}; "
            "masks must have the same size"
        )
    truth_fg = truth > FOREGROUND_ABOVE
    prediction_fg = prediction > FOREGROUND_ABOVE
    tp = int(np.count_nonzero(truth_fg & prediction_fg))
    positives = int(np.count_nonzero(truth_fg))
    predicted = int(np.count_nonzero(prediction_fg))
    return BinaryCounts(
        tp=tp, fp=predicted - tp, fn=positives - tp, tn=truth.size - positives - predicted + tp
    )


def _ratio_or_one(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` in float64, with 1.0 where the denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator == 0, 1.0, numerator / denominator)


def binary_metrics(counts: BinaryCounts) -> dict[str, np.ndarray]:
    """The six ISIC 2018 Task 1 metrics from confusion counts, with the official conventions.

    Args:
        counts: counts of one image or int64 arrays of counts, one entry per image.

    Returns:
        ``{name: float64 array}`` for every name in :data:`METRICS`, shaped like the counts.
    """
    tp, fp, fn, tn = (np.asarray(c, dtype=np.int64) for c in counts)
    jaccard = _ratio_or_one(tp, tp + fp + fn)
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = (tp + tn) / (tp + tn + fp + fn)
    return {
        "jaccard": jaccard,
        "threshold_jaccard": np.where(jaccard >= JACCARD_THRESHOLD, jaccard, 0.0),
        "dice": _ratio_or_one(2 * tp, 2 * tp + fp + fn),
        "sensitivity": _ratio_or_one(tp, tp + fn),
        "specificity": _ratio_or_one(tn, tn + fp),
        "accuracy": accuracy,
    }
