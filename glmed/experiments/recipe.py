"""What the three recipes share, from the command line to the report.

That is the command line, the run directory, the split, training, the prediction loop,
scoring and the report. A recipe is a :class:`Recipe` (its dataset, model, metric and
outputs) handed to :func:`main`.

The run directory::

    config.json        the exact configuration (``--resume`` continues with it)
    manifest.csv       the split: image_id, image_path, label_path, split
    data/              generated images (--demo only)
    checkpoints/       last.pt (resume point), best.pt (best validation)
    metrics.csv        one row per epoch: losses, validation scores, seconds
    curves.png         loss and validation score per epoch
    submission/ or predictions/   one file per test image
    scores.csv         per-image test scores;  summary.json: test summary, inference cost
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, overload

import numpy as np
import pandas as pd
import torch

from glmed.data.layouts import (
    DatasetError,
    LayoutError,
    discover,
    make_split,
    read_manifest,
    scan_dataset,
    write_manifest,
)
from glmed.data.stage_samples import StageSampler
from glmed.experiments.config import (
    ConfigError,
    RecipeConfig,
    add_config_arguments,
    config_from_arguments,
    given_values,
)
from glmed.experiments.outputs import ClassMapPredictions, IsicSubmission
from glmed.inference.finishing import UNCHANGED_NOTE
from glmed.inference.inferer import predict
from glmed.io.labels import mask_to_index
from glmed.io.open import open_image
from glmed.io.writers import atomic_path
from glmed.metrics.memory import PeakMemory
from glmed.metrics.validation import Metric
from glmed.models.checkpoint import CheckpointError, load_checkpoint
from glmed.models.glnet import GLNet
from glmed.models.losses import GLNetLoss
from glmed.training.best_checkpoints import load_checkpoints
from glmed.training.distributed import SINGLE, Distributed, close_distributed, init_distributed
from glmed.training.runner import RunFiles, StagedRunner, TrainingResult
from glmed.training.stages import paper_stages
from glmed.training.trainer import GLNetTrainer


class RecipeError(ValueError):
    """A problem with the run's folder or inputs; the message names it and the fix."""


@dataclass(frozen=True)
class Recipe:
    """One dataset's experiment.

    Attributes:
        name: the script's name, shown in messages.
        description: one line for ``--help``.
        dataset: layout and paper split (``"isic"``, ``"deepglobe"``, ``"inria"``).
        class_names: one per class, background or first class at index 0.
        label_kind: how masks encode classes (``"binary"``, ``"deepglobe"``).
        model_class: :class:`~glmed.models.glnet.GLNet` or a subclass.
        config_class: the configuration dataclass (its fields are the CLI options).
        demo_defaults: config values of ``--demo`` (small backbone and sizes).
        write_demo: writes the synthetic dataset into a folder and returns its root.
        metric: validation metric.
        output: writes and scores the test predictions.
        ignore_index: a label value the loss skips (DeepGlobe's ``unknown``), or None.
        augmentation: the training augmentation preset when ``--augment`` is not given
            (:meth:`glmed.data.augment.Augmentation.preset`).
        finish: how the test masks are finished when ``--finish`` is not given: ``"lesion"``
            (:func:`glmed.inference.finishing.finish_lesion_mask`, for one lesion per image) or
            None (the network's masks as they are).
        defaults: config values where this recipe departs from the paper's for every run,
            measured to help on its kind of data (ISIC: the soft Dice term); ``--demo``'s
            values and the command line's override them, and ``--help`` shows both.
    """

    name: str
    description: str
    dataset: str
    class_names: tuple[str, ...]
    label_kind: str
    model_class: type[GLNet]
    config_class: type[RecipeConfig]
    demo_defaults: Mapping[str, Any]
    write_demo: Callable[[Path, RecipeConfig], Path]
    metric: Metric
    output: IsicSubmission | ClassMapPredictions
    ignore_index: int | None = None
    augmentation: str = "none"
    finish: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def finish_for(self, config: RecipeConfig) -> str | None:
        """The finishing of this run's test masks: ``--finish`` when given (``none`` is None), else the dataset's."""
        if config.finish is None:
            return self.finish
        return None if config.finish == "none" else config.finish


class LoadedPairs(Sequence[tuple[np.ndarray, np.ndarray]]):
    """The images and class-index labels of a manifest's rows, read from disk when indexed.

    A slice gives the pairs of those rows, still unread.
    """

    def __init__(self, table: pd.DataFrame, label_kind: str) -> None:
        self.table, self.label_kind = table.reset_index(drop=True), label_kind

    def __len__(self) -> int:
        return len(self.table)

    @overload
    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def __getitem__(self, index: slice) -> LoadedPairs: ...

    def __getitem__(self, index: int | slice) -> tuple[np.ndarray, np.ndarray] | LoadedPairs:
        if isinstance(index, slice):
            return LoadedPairs(self.table.iloc[index], self.label_kind)
        row = self.table.iloc[index]
        with open_image(row.image_path) as reader:
            image = reader.read((0, 0) + reader.size)
        with open_image(row.label_path) as reader:
            label = mask_to_index(reader.read((0, 0) + reader.size), self.label_kind, reader.name)
        return image, label


def build_parser(recipe: Recipe) -> argparse.ArgumentParser:
    """The recipe's command line: the run options, then one flag per config field."""
    parser = argparse.ArgumentParser(
        prog=f"{recipe.name}.py", description=recipe.description,
        epilog="Defaults are the paper's, except where an option's help names this recipe's own; with --demo the "
               "values marked 'with --demo' replace them, and any option given on the command line overrides both.")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="the run's folder")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in RUN_DIR from its last checkpoint, with its config.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser, recipe.config_class, recipe.demo_defaults, recipe.defaults)
    return parser


def main(recipe: Recipe, argv: Sequence[str] | None = None) -> int:
    """Run ``recipe`` with command-line ``argv``; returns the exit status (2 for bad input)."""
    args = build_parser(recipe).parse_args(argv)
    try:
        given = given_values(args, recipe.config_class)
        if args.resume:
            config = resumed_config(recipe.config_class, args.out, given)
        else:
            config = new_config(recipe, given)
        distributed = init_distributed(config.device)
        try:
            check_out_dir(args.out, args.resume)
            distributed.barrier()
            return run(recipe, config, args.out, resume=args.resume, distributed=distributed,
                       progress=not args.no_progress)
        finally:
            close_distributed()
    except (ConfigError, RecipeError, LayoutError, DatasetError, CheckpointError) as error:
        print(f"{recipe.name}: error: {error}", file=sys.stderr)
        return 2


def new_config(recipe: Recipe, given: Mapping[str, Any]) -> RecipeConfig:
    """A new run's config: the paper's defaults, the recipe's own, ``--demo``'s, then ``given``; checked."""
    return config_from_arguments(recipe.config_class, given, recipe.demo_defaults,
                                 fixed={"num_classes": len(recipe.class_names)}, recipe_defaults=recipe.defaults)


def resumed_config(config_class: type[RecipeConfig], out: Path, given: Mapping[str, Any]) -> RecipeConfig:
    """The config saved in ``out``; options given again must agree with it."""
    path = out / "config.json"
    if not path.is_file():
        raise RecipeError(f"{out}: no run to resume there (no config.json); start it without --resume")
    saved = config_class.from_json(path.read_text())
    wanted = replace(saved, **given)
    differing = [f"--{name.replace('_', '-')} (run has {getattr(saved, name)!r}, given {getattr(wanted, name)!r})"
                 for name in given if getattr(wanted, name) != getattr(saved, name)]
    if differing:
        raise RecipeError(f"--resume continues with {path}; these options differ from it: {', '.join(differing)}. "
                          "Drop them, or start a new run in another --out")
    return saved.check()


def check_out_dir(out: Path, resume: bool) -> None:
    """Fail at once when ``out`` cannot be written, or holds a run and ``resume`` is not set."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise RecipeError(f"--out {out} cannot be written ({error.strerror or error}); "
                          "choose a folder you can write to") from None
    if not resume and (out / "config.json").exists():
        raise RecipeError(f"--out {out} already holds a run (config.json); pass --resume to continue it, "
                          "or choose another --out")


def run(recipe: Recipe, config: RecipeConfig, out: Path, *, resume: bool = False,
        distributed: Distributed = SINGLE, progress: bool = True) -> int:
    """Split, train, predict the test split, score it and report; returns the exit status."""
    log = print if distributed.is_main else (lambda _: None)
    summary_path = out / "summary.json"
    if resume and summary_path.is_file():
        log(f"{out} is finished; its summary:")
        log(json.dumps(json.loads(summary_path.read_text()), indent=2))
        return 0
    device = distributed.device(config.device)
    files = RunFiles(out)
    torch.manual_seed(config.seed)
    # A bad weights file stops the run here, before any data is prepared.
    model = build_network(recipe, config, pretrained=not files.last.is_file()).to(device)
    splits = prepare_data(recipe, config, out, resume, distributed, log, progress)
    loss = GLNetLoss(config.gamma, config.main_weight, config.local_weight, config.global_weight,
                     config.fmreg_weight, ignore_index=recipe.ignore_index, boundary_weight=config.boundary_weight,
                     boundary_width=config.boundary_width, dice_weight=config.dice_weight)
    trainer = GLNetTrainer(model, loss, config.global_lr, config.local_lr, config.patches_per_step,
                           distributed=distributed, amp=config.amp, channels_last=config.channels_last,
                           listening_lr=config.listening_lr)
    sampler = StageSampler(model.config, **config.sampler_options())
    stages = paper_stages(config.sharing, config.stage_epochs)
    log(f"{recipe.name}: {len(splits['train'])} training, {len(splits['val'])} validation, "
        f"{len(splits['test'])} test images; {config.backbone}-FPN{config.fpn_channels} {config.sharing}, "
        f"stages {', '.join(f'{s.name}×{s.epochs}' for s in stages)}; {distributed.world_size} process(es) on {device}")
    runner = StagedRunner(trainer, sampler, stages, LoadedPairs(splits["train"], recipe.label_kind),
                          LoadedPairs(splits["val"], recipe.label_kind), recipe.metric, out,
                          images_per_step=config.batch_size, seed=config.seed,
                          predict_batch_size=config.predict_batch_size, distributed=distributed,
                          progress=progress, log=log, num_workers=config.workers,
                          augmentation=config.augment or recipe.augmentation,
                          validate_every=config.validate_every, keep_best=config.keep_best)
    result = runner.run(resume=resume)
    if distributed.is_main:
        scored: GLNet | list[GLNet] = model
        if config.keep_best > 1:  # the test split is scored as the user would predict: every kept epoch averaged
            scored = load_checkpoints(out, map_location=device)
        else:
            model.load_state_dict(load_checkpoint(files.best, map_location=device)["model"])
        report(recipe, config, out, scored, splits["test"], result, device, progress)
    distributed.barrier()
    return 0


def prepare_data(recipe: Recipe, config: RecipeConfig, out: Path, resume: bool, distributed: Distributed,
                 log: Callable[[str], None], progress: bool = True) -> dict[str, pd.DataFrame]:
    """Write ``config.json`` and ``manifest.csv`` (rank 0), then read the split back (every rank).

    A given ``--data`` folder is checked before anything is written, so a wrong layout
    leaves no half-made run behind.
    """
    manifest = out / "manifest.csv"
    failure = None
    if distributed.is_main and not manifest.is_file():
        try:
            _write_manifest(recipe, config, out, resume, manifest, log, progress)
        except (RecipeError, LayoutError, DatasetError) as error:
            failure = error
    failures = [text for text in distributed.gather(None if failure is None else str(failure)) if text]
    if failure is not None:
        raise failure
    if failures:  # the other processes stop with rank 0's reason instead of waiting for it
        raise RecipeError(failures[0])
    table = read_manifest(manifest)
    splits = {name: table[table["split"] == name].reset_index(drop=True) for name in ("train", "val", "test")}
    empty = [name for name, part in splits.items() if part.empty]
    if empty:
        raise RecipeError(f"{manifest}: the {' and '.join(empty)} split(s) are empty; every split needs images "
                          "(more images, or other --split counts)")
    return splits


def _write_manifest(recipe: Recipe, config: RecipeConfig, out: Path, resume: bool, manifest: Path,
                    log: Callable[[str], None], progress: bool) -> None:
    """Write the run's manifest: from a given manifest, a ``--data`` folder, or generated demo data.

    A given manifest or ``--data`` folder is read and checked before ``config.json`` is
    written; demo data is generated after it, inside the run.
    """

    def split(table: pd.DataFrame) -> pd.DataFrame:
        log(f"checking {len(table)} image/mask pairs ...")
        return make_split(_scan(table, recipe.label_kind, progress), config.split or recipe.dataset, config.seed)

    table = None
    if config.manifest is not None:
        table = _read_given_manifest(Path(config.manifest))
    elif config.data is not None:
        table = split(discover(config.data, recipe.dataset))
    if not resume:
        with atomic_path(out / "config.json") as temporary:
            Path(temporary).write_text(config.to_json())
    if table is None:
        log(f"generating {config.images} synthetic {recipe.dataset} images into {out / 'data'} ...")
        table = split(discover(recipe.write_demo(out / "data", config), recipe.dataset))
    write_manifest(table, manifest)


def _scan(table: pd.DataFrame, label_kind: str, progress: bool, chunk: int = 32) -> pd.DataFrame:
    """:func:`scan_dataset` in chunks under a progress bar; every problem is still reported at once."""
    starts = range(0, len(table), chunk)
    if progress:
        from glmed.progress import progress_bar

        starts = progress_bar(starts, desc=f"checking {len(table)} image/mask pairs", unit=f"×{chunk}", leave=False)
    parts, problems = [], []
    for start in starts:
        try:
            parts.append(scan_dataset(table.iloc[start : start + chunk], label_kind))
        except DatasetError as error:
            problems += error.problems
    if problems:
        raise DatasetError(problems)
    return pd.concat(parts)


def build_network(recipe: Recipe, config: RecipeConfig, pretrained: bool = True) -> GLNet:
    """The recipe's network with the config's settings (and ImageNet weights if given and ``pretrained``)."""
    weights = config.pretrained_backbone if pretrained else None
    try:
        return recipe.model_class.from_config(config.model_config(), pretrained_backbone=weights)
    except (FileNotFoundError, ValueError) as error:
        if weights:
            raise RecipeError(f"--pretrained-backbone: {error}") from None
        raise


def report(recipe: Recipe, config: RecipeConfig, out: Path, model: GLNet | list[GLNet], test: pd.DataFrame,
           result: TrainingResult, device: torch.device, progress: bool) -> dict[str, Any]:
    """Predict every test image into the output folder, score the files, write and print the summary.

    ``model`` is the best validated network, or (``--keep-best K``) the list of the kept ones,
    whose probabilities :func:`~glmed.inference.inferer.predict` averages.
    """
    folder = out / recipe.output.folder
    folder.mkdir(parents=True, exist_ok=True)
    rows = test.itertuples()
    if progress:
        from glmed.progress import progress_bar

        rows = progress_bar(rows, total=len(test), desc="predicting the test split", unit="image", leave=False)
    seconds = []
    finish = recipe.finish_for(config)
    finished = 0  # test masks finishing changed
    with PeakMemory(device) as peak:
        for row in rows:
            started = time.perf_counter()
            segmentation = predict(model, row.image_path, batch_size=config.predict_batch_size, device=device,
                                   with_coarse=False, thumbnail=False, finish=finish)
            seconds.append(time.perf_counter() - started)
            finished += finish is not None and UNCHANGED_NOTE not in segmentation.notes
            recipe.output.write(recipe.output.path(folder, row.image_id), segmentation.mask)
    per_image, summary = recipe.output.score(out, test, folder)
    with atomic_path(out / "scores.csv") as temporary:
        per_image.to_csv(temporary, float_format="%.17g")
    inference = {"seconds_per_image": float(np.mean(seconds)), "peak_memory_mb": peak.megabytes,
                 "peak_memory_kind": peak.kind, "device": str(device), "finish": finish or "none",
                 "masks_changed_by_finishing": int(finished),
                 "checkpoints_averaged": len(model) if isinstance(model, list) else 1}
    everything = {"test": summary, "inference": inference, "best_validation": result.best}
    with atomic_path(out / "summary.json") as temporary:
        Path(temporary).write_text(json.dumps(everything, indent=2) + "\n")
    headline = recipe.output.headline
    others = " | ".join(f"{name} {value:.4f}" for name, value in summary.items() if name not in (headline, "images"))
    print(f"test ({summary['images']} images): {headline} {summary[headline]:.4f} | {others}")
    print(f"inference: {inference['seconds_per_image']:.2f} s per image, peak memory {peak.megabytes:.0f} MB "
          f"({peak.kind})")
    if finish is not None:
        print(f"finishing: {finish} (largest region, holes filled) changed {finished} of {len(test)} test masks "
              "(--finish none turns it off)")
    if isinstance(model, list):
        print(f"test masks: the {len(model)} best validated epochs' probabilities averaged (checkpoints/top/)")
    print(f"outputs in {out}: {recipe.output.folder}/, scores.csv, summary.json, metrics.csv, curves.png, "
          "checkpoints/best.pt")
    return everything


def _read_given_manifest(path: Path) -> pd.DataFrame:
    try:
        table = read_manifest(path)
    except (ValueError, pd.errors.ParserError) as error:
        raise RecipeError(f"--manifest {path}: {error}") from None
    if "split" not in table.columns or not set(table["split"]) <= {"train", "val", "test"}:
        raise RecipeError(f"--manifest {path}: needs a split column of train/val/test "
                          "(as glmed.data.layouts.make_split and write_manifest write it)")
    return table
