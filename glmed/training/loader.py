"""One epoch's training samples through MONAI and torch, built in worker processes.

A ``monai.data.Dataset`` whose transform is a ``Compose`` of dictionary transforms (load the
pair, augment it, build the stage's sample) is batched by a ``torch.utils.data.DataLoader`` with workers.

Every sample draws from its own generator, seeded by ``(seed, stage, epoch, position in the
epoch's order)``. The samples therefore do not depend on how many workers build them or in which order
they finish, and an epoch run again after a resume draws exactly what it drew the first time.
Loading (decoding a JPEG, reading a slide's regions) happens in the workers, so the main process
only trains.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose, MapTransform
from torch.utils.data import DataLoader, DistributedSampler

from glmed.data.augment import Augmentation
from glmed.data.samples import collate_global_local
from glmed.data.stage_samples import StageSampler, StageView
from glmed.io.open import as_reader, open_as_reader
from glmed.training.distributed import SINGLE, Distributed

MIN_CORES_FOR_WORKERS = 4
"""Below this many cores samples are built in the training process: on 2 cores a loading worker
took a core from training's threads and made the demo's local stage slower (16.0 s an epoch
against 13.8 s without it, measured with ``recipes/isic_c2f.py --demo --epochs 3 2 1``)."""


def default_workers() -> int:
    """Worker processes for loading: what the machine has, minus one for training, from 4 cores up."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return available - 1 if available >= MIN_CORES_FOR_WORKERS else 0


class LoadPaird(MapTransform):
    """Fetch training pair ``pairs[d["pair"]]`` into ``image`` (a reader) and ``label`` (an array).

    Indexing the pairs is what loads them (a recipe's pairs decode their files then), so it
    happens in the worker that builds the sample. Adds ``source_size``, the image's full size.
    """

    def __init__(self, pairs: Sequence[tuple[Any, Any]]) -> None:
        super().__init__(keys=("pair",))
        self.pairs = pairs

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Open the pair's image (paths are opened here and closed by :class:`StageSampled`)."""
        d = dict(data)
        image, label = self.pairs[int(d["pair"])]
        reader, opened = open_as_reader(image)
        d.update(image=reader, label=np.asarray(label), opened=opened,
                 source_size=torch.tensor(reader.size, dtype=torch.int64))
        return d


AUGMENT_STREAM = 0xA06
"""Appended to an item's seed for its augmentation draw, so the sample's own draws (box,
patches) are the same with augmentation on or off."""


class RandAugmentd(MapTransform):
    """Change ``image`` and ``label`` alike by one draw of an :class:`~glmed.data.augment.Augmentation`.

    The draw comes from a generator seeded by the item's ``seed`` and :data:`AUGMENT_STREAM`,
    so it depends on (seed, stage, epoch, rank, position) only. The image and label become
    lazy views (:class:`~glmed.data.augment.AugmentedReader`): the sample builder reads its
    global view, box and patches from them, so they stay aligned by construction.

    Args:
        augmentation: what may change.
        min_size: no side is zoomed below this (the patch size: a patch must fit, and patches
            of one batch must share one shape) unless it was smaller to begin with.
    """

    def __init__(self, augmentation: Augmentation, min_size: int = 1) -> None:
        super().__init__(keys=("image", "label"))
        self.augmentation, self.min_size = augmentation, min_size

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace ``image`` and ``label`` with their changed views."""
        d = dict(data)
        draw = self.augmentation.draw(np.random.default_rng([*map(int, d["seed"]), AUGMENT_STREAM]))
        image = d["image"]
        d["image"], d["label"] = draw.apply(image, as_reader(d["label"], name=f"{image.name} label"),
                                            min_size=self.min_size)
        return d


class StageSampled(MapTransform):
    """The stage's sample of ``image``/``label``, drawn from a generator seeded by the item's ``seed``.

    The builder is :class:`~glmed.data.stage_samples.StageSampler`; ``source_size`` is kept.
    """

    def __init__(self, sampler: StageSampler, stage: StageView) -> None:
        super().__init__(keys=("image", "label"))
        self.sampler, self.stage = sampler, stage

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Build the sample and close an image file opened for it."""
        reader = data["image"]
        try:
            sample = self.sampler(self.stage, reader, data["label"], np.random.default_rng(list(data["seed"])))
        finally:
            if data.get("opened"):
                reader.close()
        out: dict[Hashable, Any] = {"source_size": data["source_size"]}
        out.update(sample.items())
        return out


def epoch_loader(
    pairs: Sequence[tuple[Any, Any]],
    order: Sequence[int],
    sampler: StageSampler,
    stage: StageView,
    seeds: Sequence[int],
    images_per_step: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    augmentation: Augmentation | None = None,
    distributed: Distributed = SINGLE,
) -> DataLoader:
    """Batches of one epoch: the pairs at ``order``, ``images_per_step`` at a time, in that order.

    Under ``torchrun`` a ``DistributedSampler`` (without shuffling: ``order`` is the shuffle)
    gives each process every ``world_size``-th item, padded as torch pads, so every process
    takes the same number of steps.

    Args:
        pairs: the training pairs (image, class-index label); indexing may load them.
        order: the epoch's pair indices, in visiting order (the same in every process).
        sampler: what the stage sees of an image.
        stage: the training stage.
        seeds: the epoch's position, e.g. ``(seed, stage index, epoch)``; item ``i`` of ``order``
            draws from a generator seeded by ``(*seeds, i)``, so an image gets the same sample
            whichever process builds it.
        images_per_step: images per batch.
        num_workers: loading processes (0 loads in this process).
        pin_memory: page-locked batches, for a faster copy to a GPU.
        augmentation: how each training image may change (:class:`RandAugmentd`); None or
            :meth:`Augmentation.none` changes nothing.
        distributed: this process's place in a ``torchrun`` run.
    """
    items = [{"pair": int(pair), "seed": [*map(int, seeds), position]} for position, pair in enumerate(order)]
    steps: list[MapTransform] = [LoadPaird(pairs)]
    if augmentation is not None and augmentation.enabled:
        steps.append(RandAugmentd(augmentation, min_size=sampler.config.patch_size))
    steps.append(StageSampled(sampler, stage))
    dataset = Dataset(items, transform=Compose(steps))
    share: DistributedSampler | None = None
    if distributed.enabled:
        share = DistributedSampler(dataset, num_replicas=distributed.world_size, rank=distributed.rank, shuffle=False)
    return DataLoader(dataset, batch_size=images_per_step, shuffle=False, sampler=share, num_workers=num_workers,
                      collate_fn=collate_global_local, pin_memory=pin_memory)
