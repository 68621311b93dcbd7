"""Mean IoU from a confusion matrix accumulated over a test set (DeepGlobe, Inria)."""

from __future__ import annotations

import numpy as np
import pytest

from glmed.metrics.multiclass import ConfusionMatrix


def reference_iou(truth: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class IoU by set counting, one class at a time."""
    ious = []
    for c in range(num_classes):
        union = np.count_nonzero((truth == c) | (prediction == c))
        ious.append(np.count_nonzero((truth == c) & (prediction == c)) / union if union else np.nan)
    return np.array(ious)


def test_accumulated_matrix_equals_scoring_all_pixels_together():
    rng = np.random.default_rng(1)
    truths = [rng.integers(0, 7, shape) for shape in [(20, 30), (7, 5), (64, 64)]]
    predictions = [np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, 7, t.shape)) for t in truths]
    matrix = ConfusionMatrix(7)
    for truth, prediction in zip(truths, predictions):
        matrix.update(truth, prediction)
    all_truth = np.concatenate([t.ravel() for t in truths])
    all_prediction = np.concatenate([p.ravel() for p in predictions])
    np.testing.assert_allclose(matrix.iou(), reference_iou(all_truth, all_prediction, 7), rtol=0, atol=1e-12)
    assert matrix.matrix.sum() == all_truth.size
    assert matrix.mean_iou() == pytest.approx(reference_iou(all_truth, all_prediction, 7).mean(), abs=1e-12)


def test_ignore_index_drops_its_pixels_and_its_class():
    # DeepGlobe-like: class 6 is "unknown"
    truth = np.array([[0, 0, 6, 6], [1, 1, 1, 6]])
    prediction = np.array([[0, 1, 0, 6], [1, 1, 6, 2]])
    matrix = ConfusionMatrix(7, ignore_index=6)
    matrix.update(truth, prediction)
    assert matrix.matrix.sum() == 5  # the three unknown-truth pixels are not counted
    # a prediction of "unknown" on a labelled pixel is still an error of the true class
    assert matrix.matrix[1, 6] == 1
    iou = matrix.iou()
    assert iou[0] == pytest.approx(1 / 2) and iou[1] == pytest.approx(2 / 4)
    assert np.isnan(iou[2:6]).all()
    assert matrix.mean_iou() == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_out_of_range_ignore_label_like_255():
    matrix = ConfusionMatrix(2, ignore_index=255)
    matrix.update(np.array([0, 1, 255, 1]), np.array([0, 1, 1, 0]))
    assert matrix.mean_iou() == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_bad_inputs_are_refused_with_the_fix():
    matrix = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="ignore_index"):
        matrix.update(np.array([0, 255]), np.array([0, 1]))
    with pytest.raises(ValueError, match="prediction holds values from 0 to 2"):
        matrix.update(np.array([0, 1]), np.array([0, 2]))
    with pytest.raises(ValueError, match="same shape"):
        matrix.update(np.zeros(3, int), np.zeros(4, int))
    with pytest.raises(ValueError, match="update"):
        matrix.mean_iou()
    with pytest.raises(ValueError, match="at least 1"):
        ConfusionMatrix(0)
