"""Mean IoU over classes from a confusion matrix accumulated over a whole test set.

This is how the paper scores its multi-class datasets (DeepGlobe land cover: 7 classes with
``unknown`` ignored; Inria aerial: building/background): pixels of every test image are summed
into one ``num_classes x num_classes`` matrix first, and per-class IoU is taken from the total, so
large images weigh by their pixel count (unlike the ISIC score, a mean of per-image numbers).

``ignore_index`` removes the pixels whose *truth* is that value and, when it is a class index,
leaves that class out of the mean. Predictions of the ignored class on valid truth pixels still
count as errors of the true class. A class absent from both truth and prediction everywhere has
an undefined IoU (NaN) and is left out of the mean.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class ConfusionMatrix:
    """A running ``truth x prediction`` pixel count over many images.

    Example:
        >>> matrix = ConfusionMatrix(num_classes=2)
        >>> matrix.update([[0, 1], [1, 1]], [[0, 1], [0, 1]])  # once per test image
        >>> round(matrix.mean_iou(), 4)  # (1/2 + 2/3) / 2
        0.5833
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        #: ``matrix[t, p]``: pixels of true class ``t`` predicted as ``p``.
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, truth: npt.ArrayLike, prediction: npt.ArrayLike) -> None:
        """Add one image's (or batch's) pixels.

        Args:
            truth: class indices in ``[0, num_classes)``, or ``ignore_index``.
            prediction: class indices in ``[0, num_classes)``, same shape as ``truth``.

        Raises:
            ValueError: shapes differ, or a value is outside the class range.
        """
        true_values: np.ndarray = np.asarray(truth).ravel()
        predicted_values: np.ndarray = np.asarray(prediction).ravel()
        if true_values.shape != predicted_values.shape:
            raise ValueError(f"truth has {true_values.size} pixels but prediction has {predicted_values.size}; "
                             "they must have the same shape")
        if self.ignore_index is not None:
            keep = true_values != self.ignore_index
            true_values, predicted_values = true_values[keep], predicted_values[keep]
        for name, values in (("truth", true_values), ("prediction", predicted_values)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(
                    f"{name} holds values from {values.min()} to {values.max()}, outside the "
                    f"{self.num_classes} classes [0, {self.num_classes - 1}]"
                    + ("" if name == "prediction" or self.ignore_index is not None
                       else "; pass ignore_index for a label that marks unlabelled pixels"))
        codes = true_values.astype(np.int64) * self.num_classes + predicted_values.astype(np.int64)
        self.matrix += np.bincount(codes, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes)

    def iou(self) -> np.ndarray:
        """Per-class IoU ``TP / (TP + FP + FN)`` over everything added; NaN for an absent class."""
        true_positives = np.diag(self.matrix)
        union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - true_positives
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, true_positives / union, np.nan)

    def mean_iou(self) -> float:
        """Mean IoU over the classes that occur, leaving out ``ignore_index``'s class."""
        per_class = self.iou()
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            per_class = np.delete(per_class, self.ignore_index)
        if np.isnan(per_class).all():
            raise ValueError("no pixels counted for any scored class; call update() with data first")
        return float(np.nanmean(per_class))
