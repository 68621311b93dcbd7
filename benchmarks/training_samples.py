"""Training samples per second on ISIC-sized JPEGs: built in the training process, or by DataLoader workers.

What is measured is sample building alone (no network runs): for each kind of training
stage of the paper's bidirectional schedule (:func:`glmed.training.stages.paper_stages`) —
``global`` (the downsampled image, or half the time a coarse-to-fine box), ``local`` (a few
patches of a jittered box) and ``collect`` (every patch of the box, for the local→global maps)
— the time to turn ``(JPEG path, label array)`` pairs into collated batches, two ways:

- ``main thread``: the trainer's old path, in this process: each image is opened from its
  path (``open_as_reader``, so the JPEG is decoded for every sample), handed to
  ``StageSampler(config)(stage, image, label, rng)``, and closed; a step's samples are then
  collated (``collate_global_local``).
- ``DataLoader``: :func:`glmed.training.loader.epoch_loader`, the trainer's path now — a
  torch ``DataLoader`` over a MONAI ``Dataset`` whose ``Compose[LoadPaird, StageSampled]``
  opens, decodes and samples in worker processes — with 0, 1 and 2 workers.

The images are generated dermoscopy images (:func:`glmed.data.synthetic.make_dermoscopy_image`)
written as JPEG files (quality 90) into a temporary folder, skipping those whose lesion covers
under 5% of the image (``--min-lesion``) so that boxes span several patches; their labels stay
arrays in memory, as a recipe's pairs hold them. The model settings and sampler options are the
ISIC coarse-to-fine recipe's (``recipes/isic_c2f.py``: 508-pixel global view and patches,
50-pixel overlap, 4 patches per image, box jitter 0.15, boxes for half the global samples,
6 images a step), so the box path is exercised.

Warm-up: each case's first batch (with ``w`` workers, its first ``w`` batches, one from each
worker) is built but not counted; the time until it arrives, which includes starting the
workers, is reported separately as ``warm-up s``. Rates are over the ``--samples`` samples
after it (rounded up to whole batches). The speed-up is the case's samples per second over
the main thread's for the same stage. ``CPU ms/sample`` is the CPU time of every process
involved (this one and its workers) per sample, warm-up included: it depends far less than
the rates on other work sharing the cores, and what the DataLoader path spends above the main
thread is its own overhead (starting workers, passing batches between processes). On a
machine other work is using, ``--repeats R`` runs every case in each of ``R`` rounds and shows
each case's fastest (least disturbed) round; the header prints the load average.

Workers only help when there is a free core for each of them. Here nothing else of glmed runs
while samples are built, so on a 2-core machine two workers can at best double the main
thread's rate; in real training the training step needs those cores too (which is why
``glmed.training.loader.default_workers`` starts workers only from 4 cores up). The header
prints the cores this process may use.

    python benchmarks/training_samples.py                        # 4000×3000, 24 samples a case
    python benchmarks/training_samples.py --size 4499 6748       # 6748×4499, as c2f_patch_counts.py
    python benchmarks/training_samples.py --quick                # small images: a smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

QUICK = dict(size=(120, 160), samples=4, images=2, batch_size=2, global_size=64, patch_size=64, overlap=8)
"""``--quick``: small images and a small grid, a few samples a case: seconds, for tests."""

STAGE_KINDS = {"global": "global", "local": "local", "bidirectional": "collect"}
"""Paper stage name -> the kind of sample it needs (the bidirectional stage collects every patch)."""


def usable_cores() -> int:
    """Cores this process may run on (its affinity where the OS tells it, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_average() -> str:
    """The 1-minute load average, or ``n/a`` where the OS has none: other work on the cores shows in it."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int,
                 min_lesion: float = 0.0) -> list[tuple[Path, np.ndarray]]:
    """``count`` generated dermoscopy images as JPEG files in ``folder``, each with its label array.

    Args:
        folder: where the JPEGs are written.
        count: how many images.
        size: ``(height, width)`` of each.
        seed: the first seed tried; the following ones come next.
        min_lesion: images whose lesion covers less of them than this are skipped (the
            generator's lesions cover 1.5–40% of an image; a tiny one gives a box of one patch).

    Returns:
        ``(path, label)`` training pairs, the label a ``H×W`` uint8 class map (1 = lesion).

    Raises:
        RuntimeError: when fewer than ``count`` of ``20 * count`` seeds give a large enough lesion.
    """
    from PIL import Image

    from glmed.data.synthetic import make_dermoscopy_image

    pairs: list[tuple[Path, np.ndarray]] = []
    for tried in range(seed, seed + 20 * count):
        image, label = make_dermoscopy_image(size, tried)
        if label.mean() < min_lesion:
            continue
        path = folder / f"ISIC_{tried:07d}.jpg"
        Image.fromarray(image).save(path, quality=90)
        pairs.append((path, label))
        if len(pairs) == count:
            return pairs
    raise RuntimeError(f"fewer than {count} of seeds {seed}..{seed + 20 * count - 1} give a lesion of at least "
                       f"{min_lesion:.0%} of the image")


def main_thread_batches(pairs: Sequence[tuple[Any, Any]], order: Sequence[int], sampler: Any, stage: Any,
                        seeds: Sequence[int], batch_size: int) -> Iterator[dict[str, Any]]:
    """The old trainer's batches: each sample built in this process from its decoded JPEG, then collated.

    Args:
        pairs: ``(image path, label array)`` pairs.
        order: the pair of each sample, in visiting order.
        sampler: the :class:`~glmed.data.stage_samples.StageSampler`.
        stage: the training stage.
        seeds: seed of the one generator every sample draws from, as the old trainer had.
        batch_size: images per batch.

    Yields:
        Batches as ``collate_global_local`` makes them.
    """
    from glmed.data.samples import collate_global_local
    from glmed.io.open import open_as_reader

    rng = np.random.default_rng(list(seeds))
    for start in range(0, len(order), batch_size):
        samples = []
        for index in order[start : start + batch_size]:
            image, label = pairs[index]
            reader, opened = open_as_reader(image)
            try:
                samples.append(sampler(stage, reader, np.asarray(label), rng))
            finally:
                if opened:
                    reader.close()
        yield collate_global_local(samples)


def cpu_seconds() -> float:
    """User and system CPU time of this process and its reaped children (finished DataLoader workers)."""
    import resource

    return sum(usage.ru_utime + usage.ru_stime
               for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def time_batches(batches: Iterable[dict[str, Any]], warmup: int) -> dict[str, float]:
    """Consume ``batches``, timing the ones after the first ``warmup``.

    The clock starts before the first batch is asked for, so a DataLoader's worker start-up
    falls in the warm-up. CPU time is taken over every batch, warm-up included, once the
    batches are exhausted (a DataLoader has then stopped and reaped its workers).

    Returns:
        ``warmup_s`` (until the warm-up batches were all there), ``seconds`` and ``samples``
        after them, ``patches`` (patches per counted sample) and ``cpu_per_sample`` (CPU
        seconds of every process per sample, warm-up included).
    """
    cpu = cpu_seconds()
    started = time.perf_counter()
    clock = started
    samples = patches = everything = 0
    for number, batch in enumerate(batches, 1):
        everything += len(batch["image_size"])
        if number == warmup:
            clock = time.perf_counter()
        elif number > warmup:
            samples += len(batch["image_size"])
            patches += len(batch["boxes"])
    ended = time.perf_counter()
    return {"warmup_s": clock - started, "seconds": ended - clock, "samples": samples,
            "patches": patches / max(samples, 1), "cpu_per_sample": (cpu_seconds() - cpu) / max(everything, 1)}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """``rows`` (dictionaries with the same keys) as a markdown table, keys as the header."""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(row[key]) for key in header) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs=2, type=int, default=(3000, 4000), metavar=("HEIGHT", "WIDTH"),
                        help="image size (default: 3000 4000; ISIC 2018's largest is 4499 6748)")
    parser.add_argument("--samples", type=int, default=24, help="samples timed per case, after the warm-up")
    parser.add_argument("--images", type=int, default=4, help="distinct images, visited in turn")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the recipe's, 6)")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--min-lesion", type=float, default=0.05,
                        help="skip generated images whose lesion covers less of them than this (default: 0.05)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over every case; each case's fastest round is shown (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small images and a few samples: a smoke test")
    args = parser.parse_args(argv)

    import torch

    from glmed.data.stage_samples import StageSampler
    from glmed.experiments.config import CoarseToFineRecipeConfig
    from glmed.training.loader import epoch_loader
    from glmed.training.stages import paper_stages

    recipe = CoarseToFineRecipeConfig()  # the ISIC coarse-to-fine recipe's defaults (the paper's)
    size = tuple(args.size)
    samples, images, batch_size = args.samples, args.images, args.batch_size or recipe.batch_size
    if args.quick:
        size, samples, images = QUICK["size"], QUICK["samples"], QUICK["images"]
        batch_size = args.batch_size or QUICK["batch_size"]
        recipe = replace(recipe, global_size=QUICK["global_size"], patch_size=QUICK["patch_size"],
                         overlap=QUICK["overlap"])
    config = recipe.model_config()
    sampler = StageSampler(config, **recipe.sampler_options())
    stages = paper_stages(config.sharing)
    measured_batches = -(-samples // batch_size)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="glmed-training-samples-") as folder:
        started = time.perf_counter()
        pairs = write_images(Path(folder), images, size, args.seed, 0.0 if args.quick else args.min_lesion)
        made = time.perf_counter() - started
        lesion = float(np.mean([label.mean() for _, label in pairs]))
        print(f"machine: {usable_cores()} usable cores (os.cpu_count() {os.cpu_count()}), torch threads "
              f"{torch.get_num_threads()}, load average {load_average()} at the start", flush=True)
        print(f"{images} generated dermoscopy JPEGs of {size[0]}×{size[1]} (lesions cover {lesion:.0%} of an "
              f"image on average; made in {made:.0f} s)", flush=True)
        print(f"coarse-to-fine {config.sharing}: global {config.global_size}, patches {config.patch_size}, "
              f"overlap {config.overlap}, {sampler.patches_per_image} patches per image, batches of {batch_size}, "
              f"{measured_batches * batch_size} samples timed per case after the warm-up", flush=True)
        best: dict[tuple[int, int | None], dict[str, float]] = {}
        for round_ in range(1, args.repeats + 1):
            for index, stage in enumerate(stages):
                seeds = (args.seed, index, 0, 0, 1)
                for workers in [None, *args.workers]:
                    warmup = max(1, workers or 0)
                    order = [k % images for k in range((warmup + measured_batches) * batch_size)]
                    if workers is None:
                        batches: Iterable[dict[str, Any]] = main_thread_batches(pairs, order, sampler, stage, seeds,
                                                                                batch_size)
                    else:
                        batches = epoch_loader(pairs, order, sampler, stage, seeds, batch_size, num_workers=workers)
                    timed = time_batches(batches, warmup)
                    timed["rate"] = timed["samples"] / timed["seconds"]
                    if (index, workers) not in best or timed["rate"] > best[index, workers]["rate"]:
                        best[index, workers] = timed
                    print(f"  round {round_}: {STAGE_KINDS.get(stage.name, stage.name):8s} "
                          f"{'main thread' if workers is None else 'DataLoader':12s} workers "
                          f"{'–' if workers is None else workers}: {timed['rate']:.2f} samples/s", flush=True)
    for index, stage in enumerate(stages):
        baseline = best[index, None]["rate"]
        for workers in [None, *args.workers]:
            timed = best[index, workers]
            rows.append({
                "stage": STAGE_KINDS.get(stage.name, stage.name),
                "path": "main thread" if workers is None else "DataLoader",
                "workers": "–" if workers is None else workers,
                "patches/sample": f"{timed['patches']:.1f}",
                "warm-up s": f"{timed['warmup_s']:.2f}",
                "ms/sample": f"{1000 / timed['rate']:.1f}",
                "samples/s": f"{timed['rate']:.2f}",
                "speed-up": f"{timed['rate'] / baseline:.2f}×",
                "CPU ms/sample": f"{1000 * timed['cpu_per_sample']:.1f}",
            })
    print(f"load average {load_average()} at the end (this benchmark's own processes count in it too)")
    print()
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
