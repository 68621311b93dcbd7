"""Coarse-to-fine GLNet against MONAI's global and sliding-window networks at the same training budget (issue 14).

What a user would pick instead of glmed, trained on the same generated images for the same
CPU time, beside glmed's own rows (the shape of the paper's Table 4) and the coarse-to-fine
model with each accuracy addition, alone and together:

* ``monai_global``: MONAI's ``FlexibleUNet`` (the recipe's ResNet as encoder, random weights)
  on the whole image downsampled to the global view's size, its logits upsampled bilinearly.
* ``monai_local``: the same network on full-resolution windows of the patch size, predicted
  through MONAI's ``sliding_window_inference`` with the patches' overlap.
* ``global_only``, ``local_only``, ``g2l``, ``bidirectional``, ``box``: glmed's global branch
  alone, local branch alone, GLNet with G→L and G⇄L sharing, and the coarse-to-fine G⇄L model
  (its relaxed box refined), trained through ``glmed.fit`` in the paper's stages.
* ``box+NAME``: the box model with one addition from :data:`ADDITIONS` (the boundary loss,
  ISIC finishing, test-time augmentation, ...); ``box+all``: with every addition the
  installed glmed offers. An addition that needs a ``glmed.predict`` keyword the installed
  glmed lacks (e.g. ``tta=``) gives a row marked unavailable. Adding one is one line there.

Data. :func:`glmed.data.synthetic.make_hard_dermoscopy_image` (freckles, hairs and dark corners
that fool a patch, fine ragged borders and pale texture inside the lesion that a 6×
downsampling removes, most lesions under 20% of the image) at 1024×1536, train, validation
and test splits drawn from disjoint seeds; the same images for every row and seed.

Models and training. glmed's rows use the ISIC coarse-to-fine recipe's demo model
(``recipes/isic_c2f.py --demo``: ResNet18-FPN64, global view and patches of 192 pixels,
24-pixel overlap, its learning rates, batch, patches per image and box jitter), its
augmentation preset (``dermoscopy``) and the stages and epochs given here. The peers get the
same images, augmentation draws (glmed's :class:`~glmed.data.augment.Augmentation` on the same
readers), images per step, input sizes, encoder and Adam at the recipe's global learning rate,
with the loss a MONAI user would pick (``DiceCELoss``); the sliding-window peer draws half
its windows centred on lesion pixels and half anywhere (as MONAI's ``RandCropByPosNegLabeld``
does), ``patches_per_image`` of them per image. Nobody selects checkpoints: every network is
scored as its training leaves it, on the test images (``--val N`` adds N validation images
for a second, smaller estimate in the per-run table; none by default, as they cost scoring time).

Rows that share training share it: ``global_only``, ``g2l`` and ``bidirectional`` are one
bidirectional GLNet read after its global, local and bidirectional stage (G→L is those
weights without the local→global convolutions, which only the third stage trains: the same
network a G→L training would give, up to its initial weights), and the finishing and TTA rows
read the box model's weights. Each row's CPU minutes are those of all the training its
weights had. ``local_only`` trains for as many epochs as G→L's global and local stages together.

Fairness rule: the same CPU time. In every seed the MONAI peers train (step after step, epoch
after epoch over the images) until they have used as much CPU time as the costliest
coarse-to-fine training of that seed (with the default rows, the box model with the boundary
loss: the model whose additions are meant to beat the peers), so no box row had more training
time than a peer. The plain G⇄L GLNet may cost more (its bidirectional stage collects every
patch of the whole image, not of a box); its CPU minutes say so. CPU time is the training's
own (``time.process_time`` of the process that trains it, all its threads, plus finished
children; samples are built in the process, ``num_workers=0``), measured around training
alone, not scoring, so other jobs on the machine change it less than wall time. Equal steps × images would have
been the other choice; it hides that a glmed step (two branches, a collect pass) costs more
than a peer's, which is what a user pays. The steps each row took are in the tables.

Columns, per row over the seeds: the ISIC 2018 Task 1 thresholded Jaccard (each image's
Jaccard, counted as 0 under 0.65; the challenge's ranking metric) as mean ± standard deviation
and min–max; the plain Jaccard's mean; test images under 0.65 per run; CPU minutes of training;
optimiser steps. The per-run table (``--csv``) adds the validation images' thresholded Jaccard
and the wall minutes from the start of the row's training to its scores.

    python benchmarks/accuracy_vs_monai.py --csv runs.csv       # every row, 3 seeds
    python benchmarks/accuracy_vs_monai.py --quick              # tiny images and network, 1 seed
    python benchmarks/accuracy_vs_monai.py --rows monai_local box box+finish --seeds 1

Epochs. A global epoch (the global branch alone on 192-pixel views) costs a few CPU seconds,
a local or bidirectional one many times more, so the defaults give the global stage 20 (the
coarse mask is what the box rests on: one seed's box model with 5, 10 and 20 global epochs
and 4/1 local/bidirectional ones scored 0.20, 0.52 and 0.77 here, training for 1.7, 1.8 and
2.6 CPU minutes), and the peers, timed to the costliest box model, gain that time too.

Processes. The trainings (one per family and loss setting per seed: six a seed with every
row) run ``--workers`` at a time, each in its own spawned process with ``cores // workers``
torch threads; the full run defaults to 2 workers. A seed's peers start when its box models
are done. Every training of a run gets the same thread count, so the CPU-time rule compares
like with like; the glmed rows' scores do not depend on the number of workers at one thread
each (a test checks it). Scoring runs 16 patches a forward pass (``--predict-batch``).

Duration, measured on this project's 2-core CPU: on 2026-11-30, with nothing else running, the
rows of then (3 seeds, six trainings a seed, 2 workers) took 39 minutes, 13 a seed; each
training took 0.8-2.7 CPU minutes (the tables give each row's). On 2026-12-02 every row,
``box+dice`` and its training included (eight a seed), took 60 minutes on a host that ran the
same trainings (same steps, same scores) at 1.46 times the CPU time per step; a run leaves
``box+dice`` out since (:data:`OPTIONAL_ROWS`), and scores bidirectional models with
``reuse_encoder``: so run, the default rows (seven trainings a seed) took 21.6 minutes later that
day on a host 2.3 times faster per step, nothing else running. The 11-30 rows in one process with two
threads, scoring at batch 4 and 2 validation images, took 59. ``--quick`` (256×384, one
torch thread, 8 steps: a smoke test whose scores mean nothing) measured 61 s and 0.9 GB on 2
cores beside one other test run.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, however this file is loaded
from _common import (  # noqa: E402
    UNDER,
    flexible_unet,
    flexible_unet_logits,
    hard_dermoscopy_splits,
    markdown,
    recipe_settings,
    sample_std,
    sliding_window_mask,
    transfer,
)

Pair = tuple[np.ndarray, np.ndarray]
"""An image and its lesion mask."""


class Addition(NamedTuple):
    """One accuracy addition to the coarse-to-fine box model.

    Attributes:
        label: its name in the table.
        train: :class:`~glmed.models.losses.GLNetLoss` keyword values it trains with (a
            separate training per distinct set).
        predict: ``glmed.predict`` keyword values; the addition is unavailable when the
            installed ``glmed.predict`` lacks one of the keywords.
        finish: apply :func:`glmed.inference.finishing.finish_lesion_mask` to the predicted mask.
    """

    label: str
    train: tuple[tuple[str, Any], ...] = ()
    predict: tuple[tuple[str, Any], ...] = ()
    finish: bool = False


ADDITIONS: dict[str, Addition] = {
    "boundary": Addition("boundary loss", train=(("boundary_weight", 0.05),)),
    "dice": Addition("Dice term", train=(("dice_weight", 1.0),)),
    "finish": Addition("ISIC finishing", finish=True),
    "tta": Addition("test-time flips", predict=(("tta", "flips"),)),
    "grow": Addition("box growth", predict=(("grow_boxes", 2),)),
}
"""The additions, by key: each gives a row ``box+KEY`` alone, and all available ones the row ``box+all``.

The boundary loss's weight is not tuned: at weight 1 its cross-entropy on the band (0.7 at
the start) outweighed the whole focal objective (γ=6: 0.01-0.03) some 50 times (measured at
1024×1536); 0.05 starts it at a few times the focal terms. The Dice term's weight, 1 (as in
MONAI's ``DiceCELoss``), was measured against 0.1 on 3 seeds of the default rows (2026-12-01):
box + Dice 0.883, 0.875, 0.859 (0 failed images); at 0.1, 0.855, 0.696, 0.537; the plain box
model 0.877, 0.813, 0.752. ``tta`` uses the keyword another
change is adding to ``glmed.predict``; until it is there, its rows say they are unavailable.
``grow``: up to two rounds of growing a box the refined mask runs into
(:mod:`glmed.inference.box_growth`). A checkpoint ensemble is not an addition here: nobody
selects checkpoints in this benchmark, and several trainings per row would change its CPU budget.
"""


class Row(NamedTuple):
    """One row of the table: what is trained and how it is read.

    Attributes:
        label: its name in the table.
        family: the training it reads (``monai_global``, ``monai_local``, ``glnet``, ``local_only``, ``c2f``).
        read: ``peer``; ``global_only``, ``g2l``, ``bidirectional`` (a GLNet after its global,
            local, bidirectional stage); ``local_only``; ``box`` (the coarse-to-fine model).
        additions: keys of :data:`ADDITIONS` (box rows only); ``("*",)``: every available one.
    """

    label: str
    family: str
    read: str
    additions: tuple[str, ...] = ()


ROWS: dict[str, Row] = {
    "monai_global": Row("MONAI FlexibleUNet, whole image downsampled", "monai_global", "peer"),
    "monai_local": Row("MONAI FlexibleUNet, sliding window", "monai_local", "peer"),
    "global_only": Row("glmed global only", "glnet", "global_only"),
    "local_only": Row("glmed local only", "local_only", "local_only"),
    "g2l": Row("glmed G→L", "glnet", "g2l"),
    "bidirectional": Row("glmed G⇄L", "glnet", "bidirectional"),
    "box": Row("glmed G⇄L with the box (coarse-to-fine)", "c2f", "box"),
    **{f"box+{key}": Row(f"box + {addition.label}", "c2f", "box", (key,)) for key, addition in ADDITIONS.items()},
    "box+all": Row("box + every addition available", "c2f", "box", ("*",)),
}
"""Every row, by key, in the table's order."""

OPTIONAL_ROWS = ("box+dice",)
"""Rows a run leaves out unless ``--rows`` names them. The Dice term alone was measured on its own
(3 seeds, docs/benchmarks.md) and stays in ``box+all``; its own training would add an eighth
training a seed (about 3.4 CPU minutes) to a full run that should fit in 45 minutes."""

DEFAULT_ROWS = tuple(key for key in ROWS if key not in OPTIONAL_ROWS)
"""The rows a run trains and scores without ``--rows``."""

PEERS = ("monai_global", "monai_local")
"""The MONAI families: they train for the CPU time of the seed's costliest box model (:func:`peer_budget`)."""

STAGE_READ = {"global_only": 0, "g2l": 1, "bidirectional": 2, "box": 2, "local_only": 0}
"""After which stage (0 global, 1 local, 2 bidirectional) a read takes the weights."""


class Settings(NamedTuple):
    """One run's sizes, schedule and rows.

    A named tuple rather than a dataclass, so the script also works loaded from its path
    (``importlib``) without being registered as a module.

    Attributes:
        size: ``(height, width)`` of every generated image.
        train, val, test: images per split (``val`` may be 0).
        epochs: epochs of glmed's global, local and bidirectional stages.
        seeds: training seeds; every row is trained once per seed.
        rows: keys of :data:`ROWS` to run, in the table's order.
        augment: augmentation preset of every training (``none``: none).
        data_seed: seed of the generated images.
        peer_cpu_minutes: the peers' CPU budget when no glmed row is run (else ignored).
        threads: torch threads of each process (None: torch's default with one worker,
            ``cores // workers`` with several).
        workers: trainings run at once, each in its own process (1: in this process, one after another).
        predict_batch: patches (windows) per forward pass when scoring, for every row.
        verbose: print ``glmed.fit``'s line per epoch.
        model: recipe config values changed for every run, as ``(name, value)`` pairs.
    """

    size: tuple[int, int] = (1024, 1536)
    train: int = 8
    val: int = 0
    test: int = 12
    epochs: tuple[int, int, int] = (20, 4, 1)
    seeds: tuple[int, ...] = (0, 1, 2)
    rows: tuple[str, ...] = DEFAULT_ROWS
    augment: str = "dermoscopy"
    data_seed: int = 0
    peer_cpu_minutes: float | None = None
    threads: int | None = None
    workers: int = 1
    predict_batch: int = 16
    verbose: bool = False
    model: tuple[tuple[str, Any], ...] = ()


QUICK = Settings(size=(256, 384), train=4, val=1, test=3, epochs=(2, 1, 1), seeds=(0,), threads=1,
                 model=(("fpn_channels", 32), ("global_size", 64), ("patch_size", 64), ("overlap", 8)))
"""``--quick``: small images, ResNet18-FPN32, 64-pixel views, one seed, one torch thread (tiny tensors gain
nothing from more, and on a busy machine threads wait on each other): every row in a few minutes."""


# -- which additions this glmed offers --------------------------------------------------------


def missing_keywords(addition: Addition) -> list[str]:
    """The ``glmed.predict`` keywords ``addition`` needs that the installed glmed lacks."""
    import glmed

    accepted = inspect.signature(glmed.predict).parameters
    return [name for name, _ in addition.predict if name not in accepted]


def row_additions(row: Row) -> tuple[str, ...]:
    """The additions a row applies: its own, or for ``("*",)`` every available one."""
    if row.additions == ("*",):
        return tuple(key for key, addition in ADDITIONS.items() if not missing_keywords(addition))
    return row.additions


def unavailable(row: Row) -> str | None:
    """Why the installed glmed cannot run ``row``, or None."""
    missing = sorted({name for key in row_additions(row) for name in missing_keywords(ADDITIONS[key])})
    if missing:
        return f"unavailable: glmed.predict has no {', '.join(f'{name}=' for name in missing)}"
    if row.additions == ("*",) and not row_additions(row):
        return "unavailable: no addition is available"
    return None


def training_key(row: Row) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """What a row's weights come from: its family and the loss settings of its additions."""
    options = sorted(option for key in row_additions(row) for option in ADDITIONS[key].train)
    return row.family, tuple(options)


# -- measuring ------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished children, seconds."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Scores(NamedTuple):
    """One row's scores on one split."""

    threshold_jaccard: float
    jaccard: float
    under: int
    images: int


def scores_of(truths: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> Scores:
    """The ISIC 2018 Task 1 scores of predicted masks (:class:`glmed.metrics.validation.IsicMetric`)."""
    from glmed.metrics.validation import IsicMetric, score_table

    metric = IsicMetric()
    table = score_table(metric, [metric.measure(truth, mask) for truth, mask in zip(truths, masks, strict=True)])
    summary = table.attrs["summary"]
    return Scores(summary["threshold_jaccard"], summary["jaccard"], int((table["jaccard"] < UNDER).sum()), len(table))


# -- glmed ----------------------------------------------------------------------------------


def glmed_model(family: str, config: Any, model_class: type) -> Any:
    """The network a glmed family trains: bidirectional GLNet, local-only GLNet or the recipe's coarse-to-fine one."""
    import glmed

    if family == "c2f":
        return model_class.from_config(config.model_config())
    values = config.model_config().to_dict()
    values["sharing"] = "local_only" if family == "local_only" else "bidirectional"
    return glmed.GLNet.from_config(values)  # reads only a plain GLNet's fields (no box rule)


def glmed_stages(family: str, config: Any) -> list[Any]:
    """The family's stages: the paper's, with ``local_only`` given G→L's global and local epochs together."""
    from glmed.training.stages import paper_stages

    global_epochs, local_epochs, both_epochs = config.stage_epochs
    if family == "local_only":
        return paper_stages("local_only", (0, global_epochs + local_epochs, 0))
    return paper_stages("bidirectional", (global_epochs, local_epochs, both_epochs))


def read_model(model: Any, read: str) -> tuple[Any, dict[str, Any]]:
    """The network a row scores and the ``glmed.predict`` options its reading needs."""
    if read == "global_only":
        return model, {"global_only": True}
    if read == "g2l":
        return transfer(model.state_dict(), model.config, "glnet", "g2l"), {}
    return model, {}


def glmed_masks(model: Any, images: Sequence[np.ndarray], options: dict[str, Any], batch_size: int) -> list[np.ndarray]:
    """``glmed.predict``'s mask of every image with ``options``.

    Bidirectional models keep the collect pass's encoder maps for the final pass
    (``reuse_encoder``: the same masks, bit for bit, without a second encoder pass; other
    models ignore it), so scoring takes less of the run.
    """
    import glmed

    model.eval()
    return [glmed.predict(model, image, batch_size=batch_size, with_coarse=False, thumbnail=False,
                          reuse_encoder=True, **options).mask
            for image in images]


def train_glmed(key: tuple[str, tuple], reads: Iterable[str], config: Any, model_class: type,
                images: dict[str, list[Pair]], seed: int, settings: Settings,
                score: Callable[[str, Any, float, int], None], log: Callable[[str], None]) -> float:
    """Train one glmed family stage by stage; after each stage, call ``score`` for the reads it completes.

    ``score(read, model, cpu_seconds, steps)`` gets the trained network, the CPU seconds and
    optimiser steps of the training so far. Returns the CPU seconds of the whole training.
    """
    import torch

    import glmed
    from glmed.data.stage_samples import StageSampler
    from glmed.models.losses import GLNetLoss
    from glmed.training.trainer import GLNetTrainer

    family, loss_options = key
    torch.manual_seed(seed)
    model = glmed_model(family, config, model_class)
    loss = GLNetLoss(config.gamma, config.main_weight, config.local_weight, config.global_weight, config.fmreg_weight,
                     boundary_width=config.boundary_width, **dict(loss_options))
    trainer = GLNetTrainer(model, loss, global_lr=config.global_lr, local_lr=config.local_lr,
                           patches_per_step=config.patches_per_step)
    sampler = StageSampler(model.config, **config.sampler_options())
    stages = glmed_stages(family, config)
    wanted = sorted(set(reads))
    last = max(STAGE_READ[read] for read in wanted)
    steps_per_epoch = -(-len(images["train"]) // config.batch_size)
    cpu, steps = 0.0, 0
    for index in range(last + 1):
        stage = stages[index]
        # Earlier stages ride along with zero epochs, so the run's random streams are this stage's own.
        schedule = [replace(done, epochs=0) for done in stages[:index]] + [stage]
        started = cpu_seconds()
        if stage.epochs > 0:
            glmed.fit(model, images["train"], stages=schedule, trainer=trainer, sampler=sampler,
                      images_per_step=config.batch_size, seed=seed, predict_batch_size=config.predict_batch_size,
                      progress=False, num_workers=0, augmentation=settings.augment,
                      log=(lambda line, name=stage.name: log(f"    {family} {name}: {line}")) if settings.verbose
                      else None)
        cpu += cpu_seconds() - started
        steps += stage.epochs * steps_per_epoch
        for read in wanted:
            if STAGE_READ[read] == index:
                score(read, model, cpu, steps)
    del model, trainer
    gc.collect()
    return cpu


# -- MONAI peers ----------------------------------------------------------------------------


def lesion_windows(label: Any, count: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` window boxes of ``side`` pixels in a label reader: every other one centred on a lesion pixel.

    The others lie anywhere (as MONAI's ``RandCropByPosNegLabeld`` with pos = neg = 1, near
    enough: most of an image is skin). Lesion pixels are looked up on a grid of at most
    128×128 of the label (nearest neighbour), never on the whole label.

    Returns:
        ``count×4`` int64 boxes ``(row0, col0, row1, col1)``, all of one size.
    """
    from glmed.data.samples import resize_label

    height, width = label.size
    h, w = min(side, height), min(side, width)
    grid = (min(height, 128), min(width, 128))
    rows, cols = np.nonzero(resize_label(label, grid))
    boxes = np.empty((count, 4), dtype=np.int64)
    for index in range(count):
        if index % 2 == 0 and len(rows):
            pick = int(rng.integers(len(rows)))
            centre = ((rows[pick] + 0.5) * height / grid[0], (cols[pick] + 0.5) * width / grid[1])
            top = int(np.clip(round(centre[0] - h / 2), 0, height - h))
            left = int(np.clip(round(centre[1] - w / 2), 0, width - w))
        else:
            top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
        boxes[index] = (top, left, top + h, left + w)
    return boxes


def peer_batch(family: str, pairs: Sequence[Pair], config: Any, augmentation: Any,
               rng: np.random.Generator) -> tuple[Any, Any]:
    """One training batch of a peer: each image augmented (glmed's draw), then its global view or windows.

    Returns:
        ``N×C×s×s`` float32 inputs and ``N×1×s×s`` int64 labels (MONAI's channel-first labels).
    """
    import torch

    from glmed.data.normalize import DEFAULT_NORMALIZATION
    from glmed.data.samples import read_patches, resize_label
    from glmed.io.open import as_reader

    inputs, labels = [], []
    for image, label in pairs:
        image_reader, label_reader = augmentation.draw(rng).apply(as_reader(image), as_reader(label, name="label"),
                                                                  min_size=config.patch_size)
        if family == "monai_global":
            size = (config.global_size, config.global_size)
            inputs.append(DEFAULT_NORMALIZATION(image_reader.resized(size))[None])
            labels.append(torch.from_numpy(resize_label(label_reader, size).astype(np.int64))[None])
        else:
            boxes = lesion_windows(label_reader, config.patches_per_image, config.patch_size, rng)
            inputs.append(DEFAULT_NORMALIZATION(read_patches(image_reader, boxes)))
            labels.append(torch.from_numpy(read_patches(label_reader, boxes)[..., 0].astype(np.int64)))
    return torch.cat(inputs), torch.cat(labels)[:, None]


def train_peer(family: str, config: Any, train: Sequence[Pair], seed: int, budget: float,
               settings: Settings) -> tuple[Any, float, int]:
    """Train a MONAI FlexibleUNet until it has used ``budget`` CPU seconds (at least one step).

    Epoch after epoch over ``train`` in a random order, ``config.batch_size`` images a step;
    Adam at the recipe's global learning rate, MONAI's ``DiceCELoss``.

    Returns:
        The network (evaluation mode), the CPU seconds used, and the steps taken.
    """
    import torch
    from monai.losses import DiceCELoss

    from glmed.data.augment import Augmentation

    torch.manual_seed(seed)
    net = flexible_unet(config.backbone, config.num_classes).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.global_lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    augmentation = Augmentation.preset(settings.augment)
    rng = np.random.default_rng([seed, 14])
    started, steps = cpu_seconds(), 0
    while steps == 0 or cpu_seconds() - started < budget:
        order = rng.permutation(len(train))
        for first in range(0, len(order), config.batch_size):
            x, y = peer_batch(family, [train[i] for i in order[first : first + config.batch_size]], config,
                              augmentation, rng)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(flexible_unet_logits(net, x), y)
            loss.backward()
            optimizer.step()
            steps += 1
            if cpu_seconds() - started >= budget:
                break
    return net.eval(), cpu_seconds() - started, steps


def peer_masks(family: str, net: Any, images: Sequence[np.ndarray], config: Any, batch_size: int) -> list[np.ndarray]:
    """A peer's mask of every image: the global view's logits upsampled, or the sliding window's."""
    import torch
    import torch.nn.functional as F

    from glmed.data.normalize import DEFAULT_NORMALIZATION
    from glmed.io.open import as_reader

    masks = []
    for image in images:
        if family == "monai_local":
            masks.append(sliding_window_mask(partial(flexible_unet_logits, net), image, config.patch_size,
                                             config.overlap, batch_size)[0])
            continue
        view = DEFAULT_NORMALIZATION(as_reader(image).resized((config.global_size, config.global_size)))[None]
        with torch.inference_mode():
            logits = F.interpolate(flexible_unet_logits(net, view), size=image.shape[:2], mode="bilinear",
                                   align_corners=False)
        masks.append(logits[0].argmax(0).numpy().astype(np.uint8))
    return masks


# -- the run --------------------------------------------------------------------------------


def score_rows(keys: Sequence[str], masks_of: Callable[[list[np.ndarray], dict[str, Any]], list[np.ndarray]],
               images: dict[str, list[Pair]]) -> dict[str, dict[str, Any]]:
    """Score rows read from one network: one prediction per distinct set of predict options, finishing after.

    Returns:
        Per row key: ``threshold_jaccard``, ``jaccard``, ``under_065``, ``images`` on the test
        split and ``val_threshold_jaccard`` (NaN without validation images).
    """
    from glmed.inference.finishing import finish_lesion_mask

    groups: dict[tuple, list[str]] = {}
    for key in keys:
        options = tuple(sorted(option for name in row_additions(ROWS[key]) for option in ADDITIONS[name].predict))
        groups.setdefault(options, []).append(key)
    results = {}
    for options, members in groups.items():
        split_masks = {split: masks_of([image for image, _ in images[split]], dict(options))
                       for split in ("test", "val") if images[split]}
        for key in members:
            finish = any(ADDITIONS[name].finish for name in row_additions(ROWS[key]))
            found = {}
            for split, masks in split_masks.items():
                shown = [finish_lesion_mask(mask)[0] for mask in masks] if finish else masks
                found[split] = scores_of([truth for _, truth in images[split]], shown)
            test = found["test"]
            results[key] = {"threshold_jaccard": test.threshold_jaccard, "jaccard": test.jaccard,
                            "under_065": test.under, "images": test.images,
                            "val_threshold_jaccard": found["val"].threshold_jaccard if "val" in found else np.nan}
    return results


def peer_budget(spent: dict[tuple, float], settings: Settings) -> float:
    """The peers' CPU seconds: the costliest coarse-to-fine training's (any glmed training's without one).

    The claim under test is that the box model with its additions beats the peers at no more
    training time, so the peers get the time of the costliest box model of the seed; without a
    box row, that of the costliest glmed training; without any, ``settings.peer_cpu_minutes``.
    """
    boxes = [seconds for (family, _), seconds in spent.items() if family == "c2f"]
    if boxes or spent:
        return max(boxes or spent.values())
    return 60 * (settings.peer_cpu_minutes or 0.0)


class Task(NamedTuple):
    """One training and the rows read from it: run in this process or in a worker process.

    Attributes:
        seed: the training seed.
        key: :func:`training_key` of its rows (family, loss options).
        members: the row keys it scores.
    """

    seed: int
    key: tuple[str, tuple[tuple[str, Any], ...]]
    members: tuple[str, ...]


_STATE: dict[str, Any] = {}
"""What every task of a process reads: the settings, images, recipe config, network class and log."""


def start_process(settings: Settings, images: dict[str, list[Pair]], log: Callable[[str], None] | None = None) -> None:
    """Ready this process (the run's own, or a worker) for :func:`run_task`.

    A worker gets ``cores // workers`` torch threads unless ``settings.threads`` says otherwise:
    two single-threaded processes on two cores scored 12% more images a minute here than one
    process with two threads (small convolutions keep two threads waiting on each other).
    """
    import os

    import torch

    threads = settings.threads
    if threads is None and settings.workers > 1:
        threads = max(1, (os.cpu_count() or 1) // settings.workers)
    if threads:
        torch.set_num_threads(threads)
    config, model_class = recipe_settings(settings.epochs, settings.model)
    _STATE.update(settings=settings, images=images, config=config, model_class=model_class,
                  log=log or partial(print, flush=True))


def run_task(task: Task, budget: float | None = None) -> tuple[list[dict[str, Any]], float]:
    """Train ``task``'s network and score its rows; returns their per-run lines and the training's CPU seconds.

    ``budget``: a peer's CPU seconds (:func:`peer_budget`); glmed's trainings run their epochs.
    """
    settings, images, config, log = _STATE["settings"], _STATE["images"], _STATE["config"], _STATE["log"]
    seed, (family, _) = task.seed, task.key
    lines: list[dict[str, Any]] = []

    def record(keys: Sequence[str], scored: dict[str, dict[str, Any]], cpu: float, steps: int, wall: float) -> None:
        for key in keys:
            lines.append({"row": key, "seed": seed, "status": "ok", **scored[key], "cpu_minutes": cpu / 60,
                          "steps": steps, "wall_minutes": wall / 60})
            log(f"  seed {seed} | {ROWS[key].label}: thresholded Jaccard {scored[key]['threshold_jaccard']:.3f}, "
                f"Jaccard {scored[key]['jaccard']:.3f}, {scored[key]['under_065']}/{scored[key]['images']} under "
                f"{UNDER}, {cpu / 60:.1f} CPU min, {steps} steps")

    started = time.perf_counter()
    if family in PEERS:
        net, cpu, steps = train_peer(family, config, images["train"], seed, budget or 0.0, settings)
        scored = score_rows(task.members, lambda split, _: peer_masks(family, net, split, config,
                                                                      settings.predict_batch), images)
        record(task.members, scored, cpu, steps, time.perf_counter() - started)
        del net
        gc.collect()
        return lines, cpu
    reads = {ROWS[member].read: [m for m in task.members if ROWS[m].read == ROWS[member].read]
             for member in task.members}

    def score(read: str, model: Any, cpu: float, steps: int) -> None:
        network, options = read_model(model, read)
        scored = score_rows(reads[read], lambda split, extra: glmed_masks(
            network, split, {**options, **extra}, settings.predict_batch), images)
        record(reads[read], scored, cpu, steps, time.perf_counter() - started)

    cpu = train_glmed(task.key, reads, config, _STATE["model_class"], images, seed, settings, score, log)
    return lines, cpu


def seed_plan(seed: int, settings: Settings) -> tuple[list[dict[str, Any]], list[Task]]:
    """One seed's lines for rows the installed glmed cannot run, and its tasks: glmed's trainings, then the peers."""
    unrunnable = [{"row": key, "seed": seed, "status": why} for key in settings.rows
                  if (why := unavailable(ROWS[key])) is not None]
    trainings: dict[tuple, list[str]] = {}
    for key in settings.rows:
        if unavailable(ROWS[key]) is None:
            trainings.setdefault(training_key(ROWS[key]), []).append(key)
    tasks = [Task(seed, key, tuple(members)) for key, members in trainings.items()]
    return unrunnable, sorted(tasks, key=lambda task: task.key[0] in PEERS)


class InProcess:
    """An executor that runs each task at once in this process (``workers=1``): the same scheduling, no pool."""

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        """``function(*args)``, run now; its result (or its exception) in a finished future."""
        future: Future = Future()
        try:
            future.set_result(function(*args))
        except BaseException as error:  # noqa: BLE001 - handed to the caller through the future, as a pool does
            future.set_exception(error)
        return future


def run_tasks(settings: Settings, images: dict[str, list[Pair]], log: Callable[[str], None],
              lines_done: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Every seed's tasks in seed order, ``settings.workers`` at a time; returns every per-run line.

    A seed's peers start once all of its glmed trainings are done (their budget is the costliest
    box model's CPU time); until then a free worker takes the next seed's trainings. With one
    worker the order is the sequential one: seed by seed, glmed first. ``lines_done`` gets all
    lines so far after each task.
    """
    lines: list[dict[str, Any]] = []
    queue: list[Task] = []
    for seed in settings.seeds:
        unrunnable, tasks = seed_plan(seed, settings)
        lines += unrunnable
        queue += tasks
    waiting = {seed: sum(task.seed == seed and task.key[0] not in PEERS for task in queue) for seed in settings.seeds}
    spent: dict[int, dict[tuple, float]] = {seed: {} for seed in settings.seeds}
    if settings.workers > 1:
        executor: Any = ProcessPoolExecutor(settings.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=start_process, initargs=(settings, images))
    else:
        start_process(settings, images, log)
        executor = InProcess()
    running: dict[Future, Task] = {}
    with executor if settings.workers > 1 else nullcontext():
        while queue or running:
            while queue and len(running) < settings.workers:
                ready = next((task for task in queue if task.key[0] not in PEERS or not waiting[task.seed]), None)
                if ready is None:
                    break
                queue.remove(ready)
                budget = peer_budget(spent[ready.seed], settings) if ready.key[0] in PEERS else None
                running[executor.submit(run_task, ready, budget)] = ready
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                task_lines, cpu = future.result()
                lines += task_lines
                if task.key[0] not in PEERS:
                    spent[task.seed][task.key] = cpu
                    waiting[task.seed] -= 1
                lines_done(ordered(lines, settings))
    return ordered(lines, settings)


def ordered(lines: list[dict[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    """Per-run lines seed by seed, each seed's rows in the table's order."""
    order = {key: index for index, key in enumerate(settings.rows)}
    return sorted(lines, key=lambda line: (line["seed"], order[line["row"]]))


def summarise(runs: pd.DataFrame, rows: Sequence[str]) -> pd.DataFrame:
    """One line per row: thresholded Jaccard mean ± sd (min–max) over seeds, Jaccard, failures, CPU, steps."""
    lines = []
    for key in rows:
        group = runs[runs["row"] == key]
        done = group[group["status"] == "ok"]
        label = ROWS[key].label
        if ROWS[key].additions == ("*",) and not len(group[group["status"] != "ok"]):
            label += f" ({', '.join(ADDITIONS[name].label for name in row_additions(ROWS[key]))})"
        if not len(done):
            status = group["status"].iloc[0] if len(group) else "not run"
            lines.append({"row": label, "runs": 0, "thresholded Jaccard": status, "min–max": "–", "Jaccard": "–",
                          f"images < {UNDER}": "–", "CPU min": "–", "steps": "–"})
            continue
        scores = done["threshold_jaccard"]
        lines.append({
            "row": label,
            "runs": len(done),
            "thresholded Jaccard": f"{scores.mean():.3f} ± {sample_std(scores):.3f}",
            "min–max": f"{scores.min():.3f}–{scores.max():.3f}",
            "Jaccard": f"{done['jaccard'].mean():.3f}",
            f"images < {UNDER}": f"{done['under_065'].mean():.1f} / {int(done['images'].iloc[0])}",
            "CPU min": f"{done['cpu_minutes'].mean():.1f}",
            "steps": f"{done['steps'].mean():.0f}",
        })
    return pd.DataFrame(lines)


def runs_shown(runs: pd.DataFrame) -> pd.DataFrame:
    """The per-run table as printed: scores and minutes to 3 places, counts as integers, "–" where none."""
    shown = runs.astype(object)
    for name in runs.columns:
        if name in ("row", "seed", "status"):
            continue
        digits = 0 if name in ("under_065", "images", "steps") else 3
        shown[name] = runs[name].map(lambda value, digits=digits: "–" if value != value else f"{value:.{digits}f}")
    return shown


def run(settings: Settings, log: Callable[[str], None] = print,
        lines_done: Callable[[pd.DataFrame], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every chosen row with every seed; returns the per-run table and the summary.

    ``lines_done``, when given, gets the per-run table so far after each training (the CSV is
    written there, so a run stopped early keeps what it finished).
    """
    started = time.perf_counter()
    images = hard_dermoscopy_splits(settings.size, {"train": settings.train, "val": settings.val,
                                                    "test": settings.test}, settings.data_seed)
    fractions = [mask.mean() for _, mask in images["test"]]
    log(f"generated {settings.train}/{settings.val}/{settings.test} hard dermoscopy images of "
        f"{settings.size[0]}×{settings.size[1]} in {time.perf_counter() - started:.0f} s; test lesions cover "
        f"{np.median(fractions):.0%} of an image (median)")
    lines = run_tasks(settings, images, log, lambda so_far: lines_done(pd.DataFrame(so_far)) if lines_done else None)
    runs = pd.DataFrame(lines)
    return runs, summarise(runs, settings.rows)


def parse(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    """The settings of ``--quick`` or the full run, with the options given."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small images and network, one seed: minutes")
    parser.add_argument("--size", nargs=2, type=int, metavar=("HEIGHT", "WIDTH"), help="image size (1024 1536)")
    parser.add_argument("--train", type=int, help="training images (8)")
    parser.add_argument("--val", type=int, help="validation images, scored for a second estimate (0: none)")
    parser.add_argument("--test", type=int, help="test images (12)")
    parser.add_argument("--epochs", nargs=3, type=int, metavar=("GLOBAL", "LOCAL", "BOTH"),
                        help="epochs of glmed's stages (20 4 1)")
    parser.add_argument("--seeds", type=int, help="training seeds per row: 0, 1, ... (3)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), metavar="ROW",
                        help=f"rows to run, of: {' '.join(ROWS)} (all but {' '.join(OPTIONAL_ROWS)})")
    parser.add_argument("--augment", help="augmentation preset of every training, or none (dermoscopy)")
    parser.add_argument("--data-seed", type=int, help="seed of the generated images (0)")
    parser.add_argument("--peer-cpu-minutes", type=float,
                        help="the peers' CPU budget when no glmed row runs (else the costliest glmed training's)")
    parser.add_argument("--threads", type=int,
                        help="torch threads of each process (cores // workers; torch's default with one worker; "
                             "1 with --quick)")
    parser.add_argument("--workers", type=int,
                        help="trainings at once, each in its own process (2 on a machine with 2 cores or more; "
                             "1 with --quick)")
    parser.add_argument("--predict-batch", type=int, help="patches per forward pass when scoring (16)")
    parser.add_argument("--verbose", action="store_true", default=None, help="print glmed.fit's line per epoch")
    parser.add_argument("--csv", type=Path, help="also write the per-run table here (after each seed)")
    parser.add_argument("--from-csv", type=Path, nargs="+", metavar="CSV",
                        help="train nothing: print the tables of per-run tables written by --csv")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    given = {name: getattr(args, name) for name in ("size", "train", "val", "test", "epochs", "rows", "augment",
                                                        "data_seed", "peer_cpu_minutes", "threads", "workers",
                                                        "predict_batch", "verbose")
             if getattr(args, name) is not None}
    if args.workers is None and not args.quick:
        given["workers"] = min(2, os.cpu_count() or 1)
    given = {name: tuple(value) if isinstance(value, list) else value for name, value in given.items()}
    if args.seeds is not None:
        given["seeds"] = tuple(range(args.seeds))
    settings = settings._replace(**given)
    settings = settings._replace(rows=tuple(key for key in ROWS if key in settings.rows))  # the table's order
    if min(settings.train, settings.test, len(settings.seeds), settings.workers, settings.predict_batch) < 1 \
            or settings.val < 0 or min(settings.epochs) < 0:
        parser.error("--train, --test, --seeds, --workers and --predict-batch need at least 1, --val and the epochs "
                     "at least 0")
    glmed_rows = [key for key in settings.rows if ROWS[key].family not in PEERS]
    if any(ROWS[key].family in PEERS for key in settings.rows) and not glmed_rows and not settings.peer_cpu_minutes:
        parser.error("the MONAI peers train for the CPU time of the costliest glmed row: run one, or give "
                     "--peer-cpu-minutes")
    from glmed.data.augment import Augmentation

    Augmentation.preset(settings.augment)  # an unknown preset stops here, before any image is generated
    return settings, args


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run the comparison and print the tables; returns the exit status."""
    settings, args = parse(argv)
    if args.from_csv:
        runs = pd.concat([pd.read_csv(path) for path in args.from_csv], ignore_index=True)
        print(markdown(summarise(runs, [key for key in ROWS if key in set(runs["row"])])))
        print("\nper run:")
        print(markdown(runs_shown(runs)))
        return 0
    started = time.perf_counter()
    runs, summary = run(settings, lines_done=None if args.csv is None else
                        (lambda so_far: so_far.to_csv(args.csv, index=False)))
    minutes = (time.perf_counter() - started) / 60
    changed = "".join(f", {name}={value}" for name, value in settings.model)
    print(f"\nISIC coarse-to-fine demo model (recipes/isic_c2f.py --demo{changed}) and MONAI FlexibleUNet peers at "
          f"the same CPU time; glmed stages {'/'.join(map(str, settings.epochs))} epochs, augmentation "
          f"{settings.augment}, seeds {', '.join(map(str, settings.seeds))}; {settings.train} training, {settings.val} "
          f"validation and {settings.test} test hard images of {settings.size[0]}×{settings.size[1]}; "
          f"{minutes:.1f} min in all")
    print(markdown(summary))
    print("\nper run:")
    print(markdown(runs_shown(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
