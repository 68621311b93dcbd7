"""``glmed.fit``: train a GLNet through its stages from a notebook, in memory.

The same loop as the recipes (:class:`~glmed.training.runner.StagedRunner`), without a run
folder unless one is given: per-epoch random streams, a progress bar, one summary line per
epoch, validation when validation pairs are given, and the history as a table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from glmed.data.augment import Augmentation
from glmed.data.stage_samples import StageSampler
from glmed.metrics.validation import Metric
from glmed.models.glnet import GLNet
from glmed.models.losses import GLNetLoss
from glmed.training.runner import Pair, StagedRunner, StepCallback
from glmed.training.stages import Stage, paper_stages
from glmed.training.trainer import GLNetTrainer


def fit(
    model: GLNet,
    train: Sequence[Pair],
    val: Sequence[Pair] | None = None,
    *,
    stages: Sequence[Stage] | None = None,
    metric: Metric | None = None,
    global_lr: float = 1e-4,
    local_lr: float = 2e-5,
    listening_lr: float | None = None,
    amp: str = "off",
    channels_last: bool = False,
    trainer: GLNetTrainer | None = None,
    sampler: StageSampler | None = None,
    images_per_step: int = 2,
    seed: int = 0,
    predict_batch_size: int = 4,
    out_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    on_step: StepCallback | None = None,
    num_workers: int | None = None,
    augmentation: Augmentation | str | None = None,
    validate_every: int = 1,
    boundary_weight: float = 0.0,
    keep_best: int = 1,
    dice_weight: float = 0.0,
) -> pd.DataFrame:
    """Train ``model`` through ``stages``; each epoch visits every training pair once, in random order.

    Args:
        model: the network (its config gives sizes and the coarse-to-fine box rule).
        train: training images (arrays, paths or readers) with their ``H×W`` class-index labels.
        val: validation pairs, scored after every epoch (``val_*`` columns); None skips it.
        stages: the schedule; the paper's for the model's sharing mode, one epoch each, by default
            (:func:`glmed.paper_stages`).
        metric: validation metric (ISIC 2018 Task 1 by default).
        global_lr: Adam learning rate of the global parts (the paper's 1e-4; small models on
            small data like more).
        local_lr: Adam learning rate of the local parts and aggregation head (the paper's 2e-5).
        listening_lr: Adam learning rate of the local→global convolutions in the bidirectional
            stage; a tenth of ``global_lr`` by default (:data:`~glmed.training.trainer.LISTENING_LR_FACTOR`).
        amp: mixed precision: ``"off"`` (float32), ``"bf16"`` (bfloat16 autocast, CPU or GPU) or
            ``"fp16"`` (float16 autocast with gradient scaling; the model must be on a CUDA GPU).
        channels_last: keep the model's weights and the image batches in channels-last memory
            format (faster convolutions on recent GPUs, above all with ``amp``).
        trainer: all optimisation settings at once (then ``global_lr``, ``local_lr``, ``amp``,
            ``channels_last``, ``boundary_weight`` and ``dice_weight`` are not used).
        sampler: what each stage sees of an image (:class:`StageSampler` defaults).
        images_per_step: images per mini-batch.
        seed: drives image order, patch choice, box jitter and PyTorch's generator, per epoch.
        predict_batch_size: patches per forward pass while validating.
        out_dir: a run folder for checkpoints, ``metrics.csv`` and ``curves.png``; None keeps
            nothing on disk (save the result with :func:`glmed.save_model`).
        progress: show a progress bar over each epoch's steps.
        log: where the one-line summary of each epoch goes; None for silence.
        on_step: called after every step with the stage, the step number within the epoch and
            its losses.
        num_workers: processes that load images and build samples while the model trains
            (a ``torch`` DataLoader over a MONAI Dataset); None uses the machine's cores minus one
            (none below 4 cores, where a worker slows training down),
            0 builds them in this process. The samples are the same either way.
        augmentation: how each training image may change, drawn anew per image and epoch
            (flips, quarter turns, zoom, colour): an :class:`~glmed.data.augment.Augmentation`,
            a preset's name (``"dermoscopy"``, ``"histology"``, ``"aerial"``), or None for none.
        validate_every: validate after every this many epochs of a stage (and after its last);
            a stage that trains the global branch alone is scored on its own masks (``val_coarse_*``).
        boundary_weight: weight of a training-only loss on a band around the labels' edges
            (:class:`~glmed.models.losses.BoundaryLoss`); 0 leaves the paper's objective as it is.
        dice_weight: weight of a soft Dice term on the main output (MONAI's ``DiceLoss``;
            :class:`~glmed.models.losses.GLNetLoss`); 0 leaves the paper's objective as it is.
        keep_best: with ``out_dir`` and ``val``, also keep the weights of this many best validated
            epochs, for an ensemble (:func:`glmed.load_checkpoints`); 1 keeps ``best.pt`` alone.

    Returns:
        One row per epoch: ``epoch``, ``stage``, ``stage_epoch``, the mean of each loss term,
        the validation scores, and seconds spent.
    """
    if not train:
        raise ValueError("fit needs at least one training image")
    if isinstance(train[0], Stage):  # glmed 0.1's fit(model, stages, pairs)
        raise TypeError("fit(model, train, val=None, *, stages=...): the schedule now comes as stages=, after "
                        "the training pairs, e.g. fit(model, pairs, stages=paper_stages('g2l'))")
    runner = StagedRunner(
        trainer or GLNetTrainer(model, GLNetLoss(boundary_weight=boundary_weight, dice_weight=dice_weight),
                                global_lr=global_lr, local_lr=local_lr, amp=amp, channels_last=channels_last,
                                listening_lr=listening_lr),
        sampler or StageSampler(model.config),
        paper_stages(model.sharing) if stages is None else stages, train, val, metric, out_dir,
        images_per_step=images_per_step, seed=seed, predict_batch_size=predict_batch_size,
        progress=progress, log=log or (lambda _: None), on_step=on_step, num_workers=num_workers,
        augmentation=augmentation, validate_every=validate_every, keep_best=keep_best,
    )
    return runner.run().history
