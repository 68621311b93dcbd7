"""Counts from arrays and the count-to-metric reductions, against the official definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from glmed.metrics.confusion import BinaryCounts, binary_counts, binary_metrics

official = pytest.importorskip("isic_challenge_scoring", reason="the official scorer is the oracle")
from isic_challenge_scoring import metrics as official_metrics  # noqa: E402
from isic_challenge_scoring.confusion import create_binary_confusion_matrix  # noqa: E402

OFFICIAL = {
    "jaccard": official_metrics.binary_jaccard,
    "threshold_jaccard": lambda cm: official_metrics.binary_threshold_jaccard(cm, threshold=0.65),
    "dice": official_metrics.binary_dice,
    "sensitivity": official_metrics.binary_sensitivity,
    "specificity": official_metrics.binary_specificity,
    "accuracy": official_metrics.binary_accuracy,
}


def test_reductions_equal_official_on_every_small_count_and_edge():
    values = [0, 1, 2, 7, 13]
    grid = [c for c in itertools.product(values, repeat=4) if sum(c) > 0]
    grid += [(6500, 0, 3500, 100), (6499, 0, 3501, 100), (10**7, 3, 5, 2 * 10**7)]
    counts = np.array(grid, dtype=np.int64)
    ours = binary_metrics(BinaryCounts(*counts.T))
    for row, (tp, fp, fn, tn) in enumerate(grid):
        cm = pd.Series({"TP": np.int64(tp), "TN": np.int64(tn), "FP": np.int64(fp), "FN": np.int64(fn)})
        for name, reference in OFFICIAL.items():
            assert ours[name][row] == reference(cm), (name, tp, fp, fn, tn)  # bit-identical


def test_array_counts_equal_official_counts():
    rng = np.random.default_rng(0)
    truth, prediction = rng.integers(0, 256, (2, 37, 53), dtype=np.uint8)
    cm = create_binary_confusion_matrix(truth > 128, prediction > 128)
    assert binary_counts(truth, prediction) == (cm["TP"], cm["FP"], cm["FN"], cm["TN"])


def test_array_counts_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="same size"):
        binary_counts(np.zeros((4, 5)), np.zeros((5, 4)))
