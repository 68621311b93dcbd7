"""Does training augmentation help the ISIC coarse-to-fine model? Same budget with and without, on hard images.

The ISIC coarse-to-fine recipe's demo model (``recipes/isic_c2f.py``: ResNet18-FPN64, global
view and patches of 192 pixels, 24-pixel overlap, its learning rates, batch, patches and box
settings, read from the recipe itself) is trained through ``glmed.fit`` on generated hard
dermoscopy images (:func:`glmed.data.synthetic.make_hard_dermoscopy_image`: freckles, hairs and
dark corners that fool a patch, pale texture inside lesions that a 6× downsampling removes,
lesions mostly under 20% of the image), once per augmentation setting and training seed, all
with the same stages and epochs. As in the recipe, the validation score picks the checkpoint
that is scored; to save time it is taken at the end of each stage (``--validate-every``).

Every run sees the same generated train, validation and test images; the seed changes the
initial weights, the image order, the patches, boxes and augmentation draws. Each run's test
images are segmented at full resolution and scored with the ISIC 2018 Task 1 metric
(:func:`glmed.training.evaluate.evaluate` with :class:`glmed.metrics.validation.IsicMetric`).
The table gives, per setting over its seeds: the thresholded Jaccard (the challenge's ranking
metric: an image's Jaccard, counted as 0 under 0.65) as mean, standard deviation and min-max
over seeds; the plain Jaccard's mean; how many test images score under 0.65 (mean per run);
and minutes per training (``glmed.fit``, validation included; not the test predictions), wall
clock and CPU time of this process (all its threads).

    python benchmarks/augmentation_accuracy.py            # 6 trainings: about 22 min on 2 idle cores
    python benchmarks/augmentation_accuracy.py --augment none --seeds 1 --verbose   # one: about 3.5 min
    python benchmarks/augmentation_accuracy.py --quick    # tiny images and network: a smoke test, a minute

The times are estimates from separate epochs measured on 2 cores; other work on the machine
slows every epoch several-fold (one training measured 19 minutes while other jobs ran).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, however this file is loaded
from _common import UNDER, hard_dermoscopy_splits, markdown, recipe_settings  # noqa: E402
from _common import sample_std as _std  # noqa: E402

if TYPE_CHECKING:
    from glmed.models.glnet import GLNet


class Settings(NamedTuple):
    """One benchmark run's sizes: images, the schedule and the settings compared.

    A named tuple rather than a dataclass, so the script also works loaded from its path
    (``importlib``) without being registered as a module.

    Attributes:
        size: ``(height, width)`` of every generated image.
        train, val, test: how many images each split gets.
        epochs: epochs of the global, local and bidirectional stages, the same for every run.
        seeds: training seeds; each setting is trained once per seed.
        augment: augmentation presets compared (``none`` is no augmentation).
        data_seed: seed of the generated images, shared by all runs.
        validate_every: validate (and maybe keep the checkpoint) every this many epochs of a
            stage, and after its last: with the default epochs, once per stage, at its end.
            Validating 1536×1024 images after every epoch would cost about as much as training.
        verbose: print ``glmed.fit``'s line per epoch (losses, validation, seconds).
        model: recipe config values changed for every run, as ``(name, value)`` pairs (none:
            the recipe's demo model; ``--quick`` makes it smaller).
    """

    size: tuple[int, int] = (1024, 1536)
    train: int = 16
    val: int = 4
    test: int = 16
    epochs: tuple[int, int, int] = (8, 5, 1)
    seeds: tuple[int, ...] = (0, 1, 2)
    augment: tuple[str, ...] = ("none", "dermoscopy")
    data_seed: int = 0
    validate_every: int = 10
    verbose: bool = False
    model: tuple[tuple[str, Any], ...] = ()


QUICK = Settings(size=(192, 256), train=4, val=2, test=2, epochs=(1, 1, 1), seeds=(0, 1),
                 model=(("fpn_channels", 32), ("global_size", 64), ("patch_size", 64), ("overlap", 8)))
"""``--quick``: tiny images and network, one epoch a stage, two seeds: a smoke test of every path."""


def make_images(settings: Settings) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The generated hard dermoscopy images of each split (different seeds per split)."""
    return hard_dermoscopy_splits(settings.size, {"train": settings.train, "val": settings.val, "test": settings.test},
                                  settings.data_seed)


def train_and_score(config: Any, model_class: type[GLNet], images: dict[str, list], augment: str, seed: int,
                    settings: Settings, log: Any = print) -> dict[str, Any]:
    """Train the recipe's model with augmentation preset ``augment`` and ``seed``; score the best checkpoint.

    Returns:
        One result row: the setting, the seed, the test scores and the time spent training.
    """
    import torch

    import glmed
    from glmed.data.augment import Augmentation
    from glmed.data.stage_samples import StageSampler
    from glmed.metrics.validation import IsicMetric
    from glmed.models.checkpoint import load_checkpoint
    from glmed.models.losses import GLNetLoss
    from glmed.training.evaluate import evaluate
    from glmed.training.stages import paper_stages
    from glmed.training.trainer import GLNetTrainer

    torch.manual_seed(seed)
    model = model_class.from_config(config.model_config())
    loss = GLNetLoss(config.gamma, config.main_weight, config.local_weight, config.global_weight,
                     config.fmreg_weight)
    trainer = GLNetTrainer(model, loss, global_lr=config.global_lr, local_lr=config.local_lr,
                           patches_per_step=config.patches_per_step)
    sampler = StageSampler(model.config, **config.sampler_options())
    augmentation = Augmentation.none() if augment == "none" else Augmentation.preset(augment)
    with tempfile.TemporaryDirectory(prefix="glmed-augmentation-") as run:
        wall, cpu = time.perf_counter(), time.process_time()
        glmed.fit(model, images["train"], images["val"], stages=paper_stages(config.sharing, config.stage_epochs),
                  metric=IsicMetric(), trainer=trainer, sampler=sampler, images_per_step=config.batch_size,
                  seed=seed, predict_batch_size=config.predict_batch_size, out_dir=run, progress=False,
                  log=(lambda line: log(f"    {line}")) if settings.verbose else None, augmentation=augmentation,
                  validate_every=settings.validate_every)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        model.load_state_dict(load_checkpoint(Path(run) / "checkpoints" / "best.pt")["model"])
    scores = evaluate(model, images["test"], IsicMetric(), batch_size=config.predict_batch_size)
    row = {
        "augment": augment,
        "seed": seed,
        "threshold_jaccard": scores.attrs["summary"]["threshold_jaccard"],
        "jaccard": scores.attrs["summary"]["jaccard"],
        "under_065": int((scores["jaccard"] < UNDER).sum()),
        "images": len(scores),
        "train_minutes": wall / 60,
        "cpu_minutes": cpu / 60,
    }
    log(f"  {augment} seed {seed}: thresholded Jaccard {row['threshold_jaccard']:.3f}, Jaccard {row['jaccard']:.3f}, "
        f"{row['under_065']}/{row['images']} under {UNDER}, {row['train_minutes']:.1f} min")
    return row


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: thresholded Jaccard mean ± std (min-max) over seeds, Jaccard, failures, time."""
    rows = []
    for augment, group in runs.groupby("augment", sort=False):
        scores = group["threshold_jaccard"]
        rows.append({
            "setting": "no augmentation" if augment == "none" else f"{augment} preset",
            "runs": len(group),
            "thresholded Jaccard": f"{scores.mean():.3f} ± {_std(scores):.3f}",
            "min-max": f"{scores.min():.3f}-{scores.max():.3f}",
            "Jaccard": f"{group['jaccard'].mean():.3f}",
            f"images < {UNDER}": f"{group['under_065'].mean():.1f} / {group['images'].iloc[0]}",
            "train min": f"{group['train_minutes'].mean():.1f}",
            "CPU min": f"{group['cpu_minutes'].mean():.1f}",
        })
    return pd.DataFrame(rows)


def run(settings: Settings, log: Any = print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every setting with every seed; returns the per-run table and the per-setting summary."""
    config, model_class = recipe_settings(settings.epochs, settings.model)
    started = time.perf_counter()
    images = make_images(settings)
    fractions = [mask.mean() for _, mask in images["test"]]
    log(f"generated {settings.train}/{settings.val}/{settings.test} hard dermoscopy images of "
        f"{settings.size[0]}×{settings.size[1]} in {time.perf_counter() - started:.0f} s; test lesions cover "
        f"{np.median(fractions):.0%} of an image (median)")
    # Seed by seed, every setting in turn: a run stopped early still compares the settings fairly.
    rows = [train_and_score(config, model_class, images, augment, seed, settings, log) for seed in settings.seeds
            for augment in settings.augment]
    runs = pd.DataFrame(rows)
    return runs, summarise(runs)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run the comparison and print the tables; returns the exit status."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny images, one epoch a stage, two seeds")
    parser.add_argument("--size", nargs=2, type=int, metavar=("HEIGHT", "WIDTH"), help="image size (1024 1536)")
    parser.add_argument("--train", type=int, help="training images (16)")
    parser.add_argument("--val", type=int, help="validation images (4)")
    parser.add_argument("--test", type=int, help="test images (16)")
    parser.add_argument("--epochs", nargs=3, type=int, metavar=("GLOBAL", "LOCAL", "BOTH"),
                        help="epochs of each stage, the same for every run (8 5 1)")
    parser.add_argument("--seeds", type=int, help="training seeds per setting: 0, 1, ... (3)")
    parser.add_argument("--augment", nargs="+", metavar="PRESET",
                        help="augmentation presets compared; none is no augmentation (none dermoscopy)")
    parser.add_argument("--data-seed", type=int, help="seed of the generated images (0)")
    parser.add_argument("--validate-every", type=int, help="validate every N epochs of a stage and after its last (10)")
    parser.add_argument("--verbose", action="store_true", default=None, help="print a line per epoch")
    parser.add_argument("--csv", type=Path, help="also write the per-run table here")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    given = {name: getattr(args, name) for name in ("size", "train", "val", "test", "epochs", "augment", "data_seed",
                                                        "validate_every", "verbose")
             if getattr(args, name) is not None}
    given = {name: tuple(value) if isinstance(value, list) else value for name, value in given.items()}
    if args.seeds is not None:
        given["seeds"] = tuple(range(args.seeds))
    settings = settings._replace(**given)
    if min(settings.train, settings.val, settings.test, len(settings.seeds), settings.validate_every) < 1 \
            or sum(settings.epochs) < 1:
        parser.error("every split, --seeds, --validate-every and the epochs need at least 1")
    from glmed.data.augment import Augmentation

    for name in settings.augment:  # an unknown preset stops here, before any image is generated
        Augmentation.preset(name)

    started = time.perf_counter()
    runs, summary = run(settings)
    if args.csv is not None:
        runs.to_csv(args.csv, index=False)
    minutes = (time.perf_counter() - started) / 60
    changed = "".join(f", {name}={value}" for name, value in settings.model)
    print(f"\nISIC coarse-to-fine demo model (recipes/isic_c2f.py --demo{changed}), stages "
          f"{'/'.join(map(str, settings.epochs))} epochs, seeds {', '.join(map(str, settings.seeds))}; "
          f"{settings.train} training, {settings.val} validation and {settings.test} test hard images of "
          f"{settings.size[0]}×{settings.size[1]}; {minutes:.0f} min in all")
    print(markdown(summary))
    print("\nper run:")
    shown = runs.assign(**{name: runs[name].map(lambda value: f"{value:.3f}")
                           for name in ("threshold_jaccard", "jaccard", "train_minutes", "cpu_minutes")})
    print(markdown(shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
