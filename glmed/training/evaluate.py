"""The one evaluation path: segment every image with :func:`glmed.predict`, score it with a metric.

Validation during training, :func:`glmed.fit`'s report, benchmarks and the demo all call
:func:`evaluate`; scoring files already written (a recipe's submission) reduces the same
metric counts through :func:`glmed.metrics.validation.score_table`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from glmed.inference.inferer import predict
from glmed.io.open import ImageLike
from glmed.metrics.validation import IsicMetric, Metric, score_table
from glmed.models.glnet import GLNet
from glmed.training.distributed import SINGLE, Distributed


def evaluate(
    model: GLNet,
    pairs: Sequence[tuple[ImageLike, np.ndarray]],
    metric: Metric | None = None,
    *,
    batch_size: int = 4,
    distributed: Distributed = SINGLE,
    progress: bool = False,
    description: str = "evaluating",
    global_only: bool = False,
) -> pd.DataFrame:
    """Segment every pair's image and score it against its class-index label.

    Args:
        model: the network (plain or coarse-to-fine).
        pairs: images (arrays, paths or readers) with their ``H×W`` class-index labels;
            indexing may load them lazily.
        metric: what to score with; the ISIC 2018 Task 1 metrics (foreground = any class
            but 0) by default.
        batch_size: patches per forward pass.
        distributed: under ``torchrun`` each process segments every ``world_size``-th image
            and the counts are gathered, so every image counts once and every process returns
            the same table.
        progress: show a progress bar over images.
        description: the progress bar's label.
        global_only: score the global branch's own masks only (no patch is read): what a
            global training stage is validated with, at a fraction of the full pipeline's cost.
            The table's scores are then those of the coarse masks.

    Returns:
        One row per pair, in order: the metric's scores of that image and ``patches`` (how many
        full-resolution patches the local branch ran). ``attrs["summary"]`` holds the metric
        over all images, plus ``coarse_<headline>``: the headline of the global branch's own
        masks (for coarse-to-fine, the stage that places the boxes), which shows the global
        stage learning before the local branch has.
    """
    metric = metric or IsicMetric()
    indices: Any = range(distributed.rank, len(pairs), distributed.world_size)
    if progress:
        from glmed.progress import progress_bar

        indices = progress_bar(indices, desc=description, unit="image", leave=False)
    mine: list[tuple[int, Any, Any, int]] = []
    for index in indices:
        image, truth = pairs[index]
        result = predict(model, image, batch_size=batch_size, thumbnail=False, global_only=global_only,
                         with_coarse=not global_only)
        coarse = None if result.coarse is None else metric.measure(truth, result.coarse)
        mine.append((index, metric.measure(truth, result.mask), coarse, result.patches))
    rows = sorted((row for part in distributed.gather(mine) for row in part), key=lambda row: row[0])
    table = score_table(metric, [stats for _, stats, _, _ in rows])
    table["patches"] = [patches for _, _, _, patches in rows]
    coarse = [stats for _, _, stats, _ in rows if stats is not None]
    if coarse:
        table.attrs["summary"][f"coarse_{metric.name}"] = metric.reduce(coarse)[metric.name]
    return table
