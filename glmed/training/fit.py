"""Training a GLNet through its stages on in-memory or on-disk images, and evaluating it.

A small loop for notebooks, tests and benchmarks; the recipes add checkpoints, resuming
and data loaders on top of the same pieces (:class:`~glmed.training.trainer.GLNetTrainer`,
:class:`~glmed.data.stage_samples.StageSampler`).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

from glmed.data.samples import collate_global_local
from glmed.io.open import ImageLike, open_as_reader
from glmed.inference.inferer import predict
from glmed.data.stage_samples import StageSampler
from glmed.training.trainer import GLNetTrainer
from glmed.training.stages import Stage
from glmed.metrics.confusion import binary_counts, binary_metrics
from glmed.models.glnet import GLNet

Pair = Tuple[ImageLike, np.ndarray]
"""An image (array, path or reader) and its ``H×W`` class-index label."""


def fit(
    model: GLNet,
    stages: Sequence[Stage],
    pairs: Sequence[Pair],
    *,
    trainer: GLNetTrainer | None = None,
    sampler: StageSampler | None = None,
    images_per_step: int = 2,
    seed: int = 0,
    on_step: Callable[[Stage, int, Dict[str, float]], None] | None = None,
) -> pd.DataFrame:
    """Train ``model`` through ``stages``; each epoch visits every pair once, in random order.

    Args:
        model: the network (its config gives sizes and the coarse-to-fine box rule).
        stages: the schedule, e.g. :func:`glmed.training.stages.paper_stages`.
        pairs: training images with their labels.
        trainer: optimisation settings (the paper's by default).
        sampler: what each stage sees of an image (:class:`StageSampler` defaults).
        images_per_step: images per mini-batch.
        seed: drives image order, patch choice and box jitter.
        on_step: called after every step with the stage, the step number within the epoch
            and its losses.

    Returns:
        One row per epoch: stage, epoch and the mean of each loss term.
    """
    if not pairs:
        raise ValueError("fit needs at least one training image")
    if images_per_step < 1:
        raise ValueError(f"images_per_step must be at least 1, got {images_per_step}")
    trainer = trainer or GLNetTrainer(model)
    sampler = sampler or StageSampler(model.config)
    rng = np.random.default_rng(seed)
    rows: List[dict] = []
    for stage in stages:
        optimizer = trainer.optimizer(stage)
        report = None if on_step is None else (lambda number, terms, stage=stage: on_step(stage, number, terms))
        for epoch in range(1, stage.epochs + 1):
            order = rng.permutation(len(pairs))
            batches = (
                collate_global_local([_sample(sampler, stage, pairs[i], rng) for i in order[start : start + images_per_step]])
                for start in range(0, len(order), images_per_step)
            )
            means = trainer.train_epoch(stage, batches, optimizer, report)
            rows.append({"stage": stage.name, "epoch": epoch, **means})
    return pd.DataFrame(rows)


def evaluate(model: GLNet, pairs: Sequence[Pair], batch_size: int = 4) -> pd.DataFrame:
    """Segment each image and score it with the ISIC 2018 Task 1 metrics (foreground = class ≠ 0).

    Returns:
        One row per image (in order) with ``jaccard``, ``threshold_jaccard``, ``dice``,
        ``sensitivity``, ``specificity``, ``accuracy`` and the number of ``patches`` run.
    """
    rows = []
    for image, label in pairs:
        result = predict(model, image, batch_size=batch_size)
        counts = binary_counts((np.asarray(label) != 0) * 255, (result.mask != 0) * 255)
        metrics = {name: float(value) for name, value in binary_metrics(counts).items()}
        rows.append({**metrics, "patches": result.patches})
    return pd.DataFrame(rows)


def _sample(sampler: StageSampler, stage: Stage, pair: Pair, rng: np.random.Generator) -> dict:
    """One training sample of ``pair``; an image given as a path is opened for it and closed again."""
    image, label = pair
    reader, opened = open_as_reader(image)
    try:
        return sampler(stage, reader, np.asarray(label), rng)
    finally:
        if opened:
            reader.close()

