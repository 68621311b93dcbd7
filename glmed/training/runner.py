"""The one training loop: stages, epochs, validation and, with a run folder, checkpoints and curves.

:class:`StagedRunner` trains a GLNet through a schedule of :class:`~glmed.training.stages.Stage`
and knows nothing of any dataset: it takes training and (optionally) validation pairs (image,
class-index label) and a :class:`~glmed.metrics.validation.Metric`. After every epoch it
validates and prints one line; given a run folder it also keeps the best checkpoint by the
metric's headline, writes the "last" checkpoint and rewrites ``metrics.csv`` and
``curves.png`` (all atomically). :func:`glmed.fit` is this loop without a folder; the recipes
run it with one.

**Resuming** is at epoch granularity. A run killed at any moment — even mid-epoch, even mid-
write — continues from the last epoch-end checkpoint: finished stages are skipped, the
unfinished stage gets its optimiser state back, and the killed epoch starts over. Every
epoch draws its randomness (image order, patch choice, box jitter, and PyTorch's generator)
from streams seeded by ``(seed, stage, epoch, rank)`` alone, so an epoch run again after a
resume draws exactly what it drew the first time and the run ends with the same weights as
an uninterrupted one (bit for bit on the same machine and thread count).

Run directory::

    checkpoints/last.pt   checkpoints/best.pt   metrics.csv   curves.png
    checkpoints/top/*.pt  checkpoints/top.json   (with keep_best > 1: the best few, for an ensemble)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from glmed.data.augment import Augmentation, as_augmentation
from glmed.data.stage_samples import StageSampler
from glmed.io.open import ImageLike
from glmed.io.writers import atomic_path
from glmed.metrics.validation import IsicMetric, Metric
from glmed.models.checkpoint import CheckpointError, load_checkpoint, remove_stale_temporaries, save_checkpoint
from glmed.models.glnet import GLNet
from glmed.models.placement import model_device
from glmed.training.best_checkpoints import BestCheckpoints
from glmed.training.distributed import SINGLE, Distributed
from glmed.training.evaluate import evaluate
from glmed.training.loader import default_workers, epoch_loader
from glmed.training.stages import Stage
from glmed.training.trainer import GLNetTrainer

Pair = tuple[ImageLike, np.ndarray]
"""An image (array, path or reader) and its ``H×W`` class-index label."""

StepCallback = Callable[[Stage, int, dict[str, float]], None]
"""Called after every step with the stage, the step number within the epoch and its losses."""


@dataclass(frozen=True)
class RunFiles:
    """Where a run keeps its files, under ``root``."""

    root: Path

    @property
    def last(self) -> Path:
        """The checkpoint written after every epoch: weights, optimiser, position, history."""
        return self.root / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        """The weights of the epoch with the best validation headline."""
        return self.root / "checkpoints" / "best.pt"

    @property
    def metrics(self) -> Path:
        """One row per epoch (losses, validation scores, timings), rewritten after every epoch."""
        return self.root / "metrics.csv"

    @property
    def curves(self) -> Path:
        """Training loss and validation headline per epoch, drawn from ``metrics.csv``."""
        return self.root / "curves.png"


@dataclass
class TrainingResult:
    """What :meth:`StagedRunner.run` returns.

    Attributes:
        history: one row per epoch (the content of ``metrics.csv``).
        best: ``score``, ``metric``, ``stage`` and ``epoch`` of the best validation (the last
            epoch when there is no validation data).
        files: the run's paths (``files.best`` holds the best weights); None without a folder.
    """

    history: pd.DataFrame
    best: dict[str, object]
    files: RunFiles | None


class StagedRunner:
    """Trains through stages with per-epoch validation, checkpoints and resuming.

    Args:
        trainer: the optimisation settings and the model (``trainer.model``, already on
            its device; under ``torchrun`` built with the same ``distributed``, so that its
            steps run under ``DistributedDataParallel``, which starts every stage from rank 0's weights).
        sampler: what each stage sees of an image.
        stages: the schedule; stages with zero epochs are skipped.
        train, val: training and validation pairs; indexing loads a pair, so they may be
            lazy sequences over files; images may be arrays, paths or readers. Without
            ``val`` (None or empty) nothing is validated.
        metric: validation metric; its headline picks the best checkpoint (ISIC by default).
        out_dir: the run directory; None keeps nothing on disk (and cannot resume).
        images_per_step: images per process per optimisation step.
        seed: seeds every random stream of the run.
        predict_batch_size: patches per forward pass while validating.
        distributed: this process's place in a ``torchrun`` run; only rank 0 writes.
        progress: show progress bars.
        log: where the one-line epoch summaries go (rank 0 only).
        on_step: called after every training step (e.g. to record or plot losses).
        num_workers: processes that load and build the samples (:mod:`glmed.training.loader`);
            None uses what the machine has, minus one (none below 4 cores).
        augmentation: how training images may change (:class:`~glmed.data.augment.Augmentation`
            or a preset's name); None trains on the images as they are. Validation never augments.
        validate_every: validate after every this many epochs of a stage, and after its last.
            A stage that trains the global branch alone is validated on the global branch's own
            masks (``val_coarse_*`` columns): the local branch it would otherwise run is untrained,
            and the full pipeline costs many times more.
        keep_best: with a run folder and validation data, also keep the weights of this many best
            validated epochs (``checkpoints/top/``, listed in ``checkpoints/top.json``;
            :mod:`glmed.training.best_checkpoints`), for a checkpoint ensemble
            (:func:`~glmed.training.best_checkpoints.load_checkpoints`). 1 (default): ``best.pt`` alone.
    """

    def __init__(
        self,
        trainer: GLNetTrainer,
        sampler: StageSampler,
        stages: Sequence[Stage],
        train: Sequence[Pair],
        val: Sequence[Pair] | None = None,
        metric: Metric | None = None,
        out_dir: str | Path | None = None,
        *,
        images_per_step: int = 6,
        seed: int = 0,
        predict_batch_size: int = 4,
        distributed: Distributed = SINGLE,
        progress: bool = True,
        log: Callable[[str], None] = print,
        on_step: StepCallback | None = None,
        num_workers: int | None = None,
        augmentation: Augmentation | str | None = None,
        validate_every: int = 1,
        keep_best: int = 1,
    ) -> None:
        if not len(train):
            raise ValueError("training needs at least one training image")
        if images_per_step < 1:
            raise ValueError(f"images_per_step must be at least 1, got {images_per_step}")
        if trainer.distributed != distributed:
            raise ValueError(f"the trainer was built for {trainer.distributed} but the runner is {distributed}: build "
                             "GLNetTrainer(..., distributed=...) with the runner's, so DDP averages the gradients")
        self.trainer, self.sampler, self.stages = trainer, sampler, list(stages)
        self.train, self.val, self.metric = train, val if val is not None and len(val) else None, metric or IsicMetric()
        self.files = None if out_dir is None else RunFiles(Path(out_dir))
        self.on_step = on_step
        if validate_every < 1:
            raise ValueError(f"validate_every must be at least 1, got {validate_every}")
        self.augmentation, self.validate_every = as_augmentation(augmentation), validate_every
        self.top = None if self.files is None or keep_best == 1 else BestCheckpoints(self.files.root, keep_best)
        if keep_best < 1:
            raise ValueError(f"keep_best must be at least 1, got {keep_best}")
        self.num_workers = default_workers() if num_workers is None else num_workers
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")
        self.images_per_step, self.seed, self.predict_batch_size = images_per_step, seed, predict_batch_size
        self.distributed, self.progress, self.log = distributed, progress, log

    @property
    def model(self) -> GLNet:
        """The trainer's model, the one being trained, validated and checkpointed."""
        return self.trainer.model

    def run(self, resume: bool = False) -> TrainingResult:
        """Train every unfinished epoch; with ``resume``, continue from ``checkpoints/last.pt``."""
        if resume and self.files is None:
            raise ValueError("resume needs a run folder (out_dir) to resume from")
        history: list[dict[str, object]] = []
        best: dict[str, Any] = {"score": -math.inf, "metric": self.metric.name, "stage": None, "epoch": None,
                                "kind": None}
        position, optimizer_state = (-1, 0), None
        if resume and self.files is not None and self.files.last.is_file():
            record = self._load_last()
            history, best = list(record["history"]), dict(record["best"])
            position = (record["position"]["stage_index"], record["position"]["epoch"])
            optimizer_state = record["optimizer"]
            if self.trainer.scaler is not None and record.get("scaler"):  # fp16's loss scale, as it was
                self.trainer.scaler.load_state_dict(record["scaler"])
        elif self.files is not None and self.distributed.is_main:
            self.files.root.mkdir(parents=True, exist_ok=True)
        self._write_metrics(history)
        for index, stage in enumerate(self.stages):
            done = position[1] if index == position[0] else (stage.epochs if index < position[0] else 0)
            if done >= stage.epochs:
                continue
            optimizer = self.trainer.optimizer(stage)
            if index == position[0] and optimizer_state is not None:
                optimizer.load_state_dict(optimizer_state)
            for epoch in range(done + 1, stage.epochs + 1):
                row = self._epoch(index, stage, epoch, optimizer, len(history) + 1)
                history.append(row)
                where = (index, stage.name, epoch)
                kind, score = self._validated(row)
                if _better(kind, score, best, self.val is None):
                    best = {"score": score, "metric": self.metric.name, "stage": stage.name, "epoch": epoch,
                            "kind": kind}
                    self._save("best", position=where, best=best)
                if self.top is not None and kind is not None and self.distributed.is_main:
                    validation = {"score": score, "metric": self.metric.name, "stage": stage.name, "epoch": epoch,
                                  "kind": kind}
                    self.top.offer(score, kind, stage.name, epoch, partial(self._save, position=where, best=validation))
                scaler = None if self.trainer.scaler is None else self.trainer.scaler.state_dict()
                self._save("last", position=where, best=best, history=history, optimizer=optimizer.state_dict(),
                           scaler=scaler)
                self._write_metrics(history)
                if self.distributed.is_main:
                    self.log(self._summary(row, best))
                self.distributed.barrier()
        if best["epoch"] is None:
            raise ValueError("the schedule has no epochs to train")
        # The stages froze parts; hand the model back whole, as a training loop would leave it.
        self.model.requires_grad_(True)
        self.model.train()
        return TrainingResult(pd.DataFrame(history), best, self.files)

    # -- one epoch -----------------------------------------------------------------------

    def _epoch(self, index: int, stage: Stage, epoch: int, optimizer: torch.optim.Optimizer,
               number: int) -> dict[str, object]:
        """Train one epoch and validate; returns its row of ``metrics.csv``."""
        rank = self.distributed.rank
        torch.manual_seed(int(_generator(self.seed, index, epoch, rank, 0).integers(2**62)))
        order = _generator(self.seed, index, epoch).permutation(len(self.train)).tolist()
        self._sizes: list[tuple[int, int]] = []
        steps = math.ceil(math.ceil(len(order) / self.distributed.world_size) / self.images_per_step)
        label = f"{stage.name} epoch {epoch}/{stage.epochs}"
        bar = self._bar(steps, label, "step")

        # The samples' seeds leave the rank out (0 stands where it was): an image gets the same sample
        # whichever process trains it, and a one-process run draws what it always drew.
        loader = epoch_loader(self.train, order, self.sampler, stage, (self.seed, index, epoch, 0, 1),
                              self.images_per_step, self.num_workers,
                              pin_memory=model_device(self.model).type == "cuda", augmentation=self.augmentation,
                              distributed=self.distributed)

        def batches() -> Iterator[dict[str, Any]]:
            for batch in loader:
                self._sizes += [(int(h), int(w)) for h, w in batch.pop("source_size").tolist()]
                yield batch

        def on_step(step: int, terms: dict[str, float]) -> None:
            if bar is not None:
                bar.set_postfix(loss=f"{terms['loss']:.4f}", refresh=False)
                bar.update()
            if self.on_step is not None:
                self.on_step(stage, step, terms)

        started = time.perf_counter()
        try:
            means = self.distributed.mean(self.trainer.train_epoch(stage, batches(), optimizer, on_step))
            self._record_image_size()
        finally:
            if bar is not None:
                bar.close()
        trained = time.perf_counter() - started
        scores: dict[str, float] = {}
        if self.val is not None and (epoch % self.validate_every == 0 or epoch == stage.epochs):
            global_only = stage.global_only and not stage.collect_local and self.model.sharing.has_global
            summary = evaluate(self.model, self.val, self.metric, batch_size=self.predict_batch_size,
                               distributed=self.distributed, progress=self._show_progress,
                               description=f"validating ({label})", global_only=global_only).attrs["summary"]
            scores = {f"coarse_{name}": value for name, value in summary.items()} if global_only else summary
        return {"epoch": number, "stage": stage.name, "stage_epoch": epoch, **means,
                **{f"val_{name}": value for name, value in scores.items()},
                "train_seconds": round(trained, 3), "total_seconds": round(time.perf_counter() - started, 3)}

    def _validated(self, row: dict[str, object]) -> tuple[str | None, float]:
        """What the epoch's validation measured (``"full"``, ``"coarse"`` or None) and its headline."""
        for kind, column in (("full", f"val_{self.metric.name}"), ("coarse", f"val_coarse_{self.metric.name}")):
            if column in row and not (kind == "coarse" and f"val_{self.metric.name}" in row):
                return kind, float(row[column])  # type: ignore[arg-type]
        return None, math.nan

    def _record_image_size(self) -> None:
        """Record the median size of the epoch's training images in the model's config.

        Every epoch visits every training image once, so this is the training set's median
        whatever epoch a resumed run starts with; predictions on images far from it get a note.
        """
        sizes = [size for part in self.distributed.gather(self._sizes) for size in part]
        if sizes:
            height, width = (int(v) for v in np.median(np.asarray(sizes), axis=0))
            self.model.config = replace(self.model.config, trained_image_size=(height, width))


    @property
    def _show_progress(self) -> bool:
        return self.progress and self.distributed.is_main

    def _bar(self, total: int, description: str, unit: str):
        if not self._show_progress:
            return None
        from glmed.progress import progress_bar

        return progress_bar(total=total, desc=description, unit=unit, leave=False)

    def _summary(self, row: dict[str, object], best: dict[str, object]) -> str:
        total = sum(stage.epochs for stage in self.stages)
        name = self.metric.name
        head = f"epoch {row['epoch']}/{total} | stage {row['stage']} {row['stage_epoch']} | loss {row['loss']:.4f}"
        kind, score = self._validated(row)
        if kind is None:
            return f"{head} | {row['total_seconds']:.0f} s"
        best_kind = "" if best.get("kind") == "full" else " coarse"
        shown = (f"val {name} {score:.4f}" if kind == "full" else f"val coarse {name} {score:.4f} (global branch)")
        coarse = f" | coarse {row[f'val_coarse_{name}']:.4f}" if kind == "full" and f"val_coarse_{name}" in row else ""
        return (f"{head} | {shown} (best{best_kind} {best['score']:.4f}, {best['stage']} {best['epoch']}){coarse} "
                f"| {row['total_seconds']:.0f} s")

    # -- files ---------------------------------------------------------------------------

    def _save(self, which: str | Path, *, position: tuple[int, str, int], **fields: object) -> None:
        """Write the ``"best"`` or ``"last"`` checkpoint, or one at a path (rank 0, with a run folder only)."""
        if self.files is None or not self.distributed.is_main:
            return
        path = which if isinstance(which, Path) else self.files.best if which == "best" else self.files.last
        index, name, epoch = position
        save_checkpoint(path, self.model, position={"stage_index": index, "stage": name, "epoch": epoch},
                        seed=self.seed, world_size=self.distributed.world_size,
                        stages=[stage.to_dict() for stage in self.stages], **fields)

    def _load_last(self) -> dict[str, Any]:
        """Read ``last.pt``, check it belongs to this schedule and seed, load its weights."""
        assert self.files is not None  # run() resumes only with a folder
        if self.distributed.is_main:
            for path in remove_stale_temporaries(self.files.root):
                self.log(f"removed {path}, left half-written by the interrupted run")
        self.distributed.barrier()
        record = load_checkpoint(self.files.last, map_location="cpu")
        stages = [stage.to_dict() for stage in self.stages]
        if record["seed"] != self.seed or _normalised(record["stages"]) != _normalised(stages):
            raise CheckpointError(
                f"{self.files.last} was written by a run with seed {record['seed']} and stages "
                f"{record['stages']}; this run has seed {self.seed} and stages {stages}. Resume with the "
                "settings of the interrupted run (its config.json), or start a new run in another folder")
        self.model.load_state_dict(record["model"])
        saved = json.loads(str(record["model_config"])).get("trained_image_size")
        if saved is not None:  # what the interrupted run recorded, for notes on predictions
            self.model.config = replace(self.model.config, trained_image_size=tuple(saved))
        if record["world_size"] != self.distributed.world_size and self.distributed.is_main:
            self.log(f"note: resuming with {self.distributed.world_size} process(es) a run begun with "
                     f"{record['world_size']}; the remaining epochs shard the data differently")
        position = record["position"]
        if self.distributed.is_main:
            self.log(f"resuming after epoch {position['epoch']} of stage {position['stage']!r} "
                     f"({len(record['history'])} epoch(s) done)")
        return record

    def _write_metrics(self, history: Sequence[dict[str, object]]) -> None:
        """Rewrite ``metrics.csv`` and ``curves.png`` from the whole history (rank 0, with a folder)."""
        if self.files is None or not self.distributed.is_main:
            return
        table = pd.DataFrame(list(history))
        with atomic_path(self.files.metrics) as temporary:
            table.to_csv(temporary, index=False)
        if len(table):
            _plot_curves(table, self.metric.name, self.files.curves)


def _generator(seed: int, *position: int) -> np.random.Generator:
    """The random stream of one position of a run (stage, epoch, rank, purpose) under ``seed``."""
    return np.random.default_rng([seed, *position])


def _better(kind: str | None, score: float, best: dict[str, Any], always: bool) -> bool:
    """Whether an epoch validated as ``kind`` with ``score`` replaces ``best``.

    Without validation data every epoch replaces it (the latest is the best). Scores of the
    full pipeline and of the global branch alone measure different things, so they are not
    compared: a full-pipeline score replaces any coarse one, and a coarse score counts only
    while no full-pipeline score exists (a run still in its global stage keeps its best
    global branch). Unvalidated epochs change nothing.
    """
    if always:
        return True
    if kind is None:
        return False
    rank = {None: -1, "coarse": 0, "full": 1}
    held = best.get("kind", "full" if best.get("epoch") is not None else None)  # older runs: full scores only
    if rank[kind] != rank[held]:
        return rank[kind] > rank[held]
    return score > best["score"]


def _normalised(stages: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    return [{key: list(value) if isinstance(value, tuple) else value for key, value in stage.items()}
            for stage in stages]


def _plot_curves(table: pd.DataFrame, metric: str, path: Path) -> None:
    """Training loss and validation headline per epoch, one colour per stage; skipped without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return
    panels = [("loss", "training loss")]
    if f"val_{metric}" in table.columns:  # runs without validation data plot the loss alone
        panels.append((f"val_{metric}", f"validation {metric}"))
    figure = Figure(figsize=(5 * len(panels), 3.6))  # no pyplot: leaves a notebook's backend alone
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (column, title) in zip(axes, panels, strict=True):
        for stage, part in table.groupby("stage", sort=False):
            axis.plot(part["epoch"], part[column], marker="o", label=str(stage))
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[-1].legend()
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=90)
