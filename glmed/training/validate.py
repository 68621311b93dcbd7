"""Validation: segment every image with :func:`glmed.predict` and score it with a metric."""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

from glmed.inference.inferer import predict
from glmed.io.open import ImageLike
from glmed.metrics.validation import Metric
from glmed.models.glnet import GLNet
from glmed.training.distributed import SINGLE, Distributed


def validate(
    model: GLNet,
    pairs: Sequence[Tuple[ImageLike, np.ndarray]],
    metric: Metric,
    *,
    batch_size: int = 4,
    distributed: Distributed = SINGLE,
    progress: bool = False,
    description: str = "validating",
) -> Dict[str, float]:
    """Segment every pair's image with :func:`glmed.predict` and score it with ``metric``.

    Returns the metric's scores of the final masks, plus ``coarse_<headline>``: the
    headline of the global branch's own masks (for coarse-to-fine, the coarse stage that
    places the boxes), which shows the global stage learning before the local branch has.
    Under ``torchrun`` each process segments every ``world_size``-th image and the counts
    are gathered before reducing, so every process returns the same scores.
    """
    indices = range(distributed.rank, len(pairs), distributed.world_size)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=description, unit="image", leave=False)
    stats, coarse = [], []
    for index in indices:
        image, truth = pairs[index]
        result = predict(model, image, batch_size=batch_size)
        stats.append(metric.measure(truth, result.mask))
        if result.coarse is not None:
            coarse.append(metric.measure(truth, result.coarse))
    gathered = distributed.gather((stats, coarse))
    scores = metric.reduce([item for part, _ in gathered for item in part])
    coarse = [item for _, part in gathered for item in part]
    if coarse:
        scores[f"coarse_{metric.name}"] = metric.reduce(coarse)[metric.name]
    return scores
