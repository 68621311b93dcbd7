"""Inference time, peak memory and Jaccard of GLNet and coarse-to-fine beside MONAI's sliding window (issue 13).

What one run prints, each case in its own fresh process, on generated ISIC-sized dermoscopy
images (6748×4499, :func:`glmed.data.synthetic.make_dermoscopy_image` with ``lesion_fraction``
0.10, 0.25 and 0.50), every network ResNet50-based, the same 508-pixel windows, 50-pixel
overlap and patch batch for all:

* ``flexible_unet_sw``: MONAI's ``sliding_window_inference`` with ``FlexibleUNet`` (ResNet50
  encoder, ``pretrained=False``: built offline, no torchvision), overlap 50/508, the reference of
  the ratio columns. FlexibleUNet needs sides divisible by 32, so each 508-pixel window is
  reflect-padded to 512 inside the predictor and its output cropped back: the same windows as
  the others, 1.6% more pixels through the network.
* ``local_sw``: the same sliding window over glmed's own local branch alone (a ``local_only``
  GLNet: ResNet50-FPN and its head).
* ``full_image``: that local branch over the whole image in one pass (about 18 GB at
  6748×4499: skipped, with a row saying why, when the machine has less free memory;
  ``--skip-full-image`` skips it always).
* ``glnet_g2l``, ``glnet_bidirectional``: ``glmed.predict`` with plain GLNet over the whole image.
* ``glnet_bidirectional_kept``: the same G⇄L with ``reuse_encoder=True``: the final pass takes the
  collect pass's encoder maps (the same mask; memory held between the passes).
* ``c2f_box``, ``c2f_uncertain``: ``glmed.predict`` with the bidirectional coarse-to-fine GLNet,
  ``refine="box"`` (every patch of the relaxed box) and ``refine="uncertain"`` (only the box's
  patches where the global branch is unsure; ``--margin``). A case the installed glmed cannot
  run (e.g. before ``refine=`` exists) becomes a row with its error.

Columns: seconds of inference (the image already in memory as uint8; converting it to the
network's input, stitching and the arg-max count), the peak resident memory inference added
(``ru_maxrss`` after inference minus the resident size just before it, the high-water mark
reset through ``/proc/self/clear_refs`` where the kernel allows, else ``ru_maxrss`` before),
on CUDA also ``torch.cuda.max_memory_allocated``; patches the network ran (sliding windows,
or the local branch's patches; ``skipped``: patches ``refine="uncertain"`` left to the global
branch); the ratios of time and memory to the FlexibleUNet sliding window of the same image;
and the ISIC Jaccard of the mask against the generated truth (:class:`glmed.metrics.validation.IsicMetric`).
Notes under the table give each case's boxes (share of the image, share of the lesion inside
them), its notes, errors and reasons for skipping.

Weights. A Jaccard says something only for a trained network, and none is at hand offline, so
before the cases run one child process trains briefly on generated images from the same
generator, the same size and lesion sizes spread from 4% to 60%, other seeds than the test
images: a bidirectional coarse-to-fine GLNet through ``glmed.fit``, stage by stage as in the
paper: global (72 steps of 2 images, the whole image or a box, half each), then local (12 steps
of 2 patches from each of 2 images, in jittered boxes); Adam at 1e-3 (the paper's 1e-4/2e-5 need
far longer). FlexibleUNet and the local-only GLNet get that local budget (the same steps,
windows per step, learning rate and focal loss, windows drawn half on the lesion, half
anywhere; ``--untrained-baselines`` skips it and marks their Jaccard ``untrained``). After
each training (each GLNet stage) the batch-norm statistics are re-estimated from 8 training
batches (:func:`reestimate_batch_norm`: brief training leaves the running averages far off).

The bidirectional stage is left out by default, and the global branch's local→global
convolutions start at zero, so G⇄L computes G→L's answer at G⇄L's full cost (collect pass
included): the time and memory are bidirectional inference's, the Jaccard is G→L's. On the
mid-size check one step of it at 1e-3 made the mask all lesion; ``--epochs 12 2 N`` runs N
epochs of it at a tenth of the learning rate on the two training images with the smallest
lesions (its collect pass reads every patch of the box, up to the whole image on large ones).
The G→L model is the same weights without those convolutions; coarse-to-fine and whole-image
G⇄L share all of them.

The budget is small, and it is not checked at full size (the check at 2000×1500 with ResNet18
and 40 global steps found the lesions, Jaccard 0.60-0.81 for the coarse mask, but called the
dark corners of a dermatoscope's round field of view lesion, so its box spanned the image):
read each coarse-to-fine row's box note, which says whether the box found the lesion.
``--checkpoint PATH`` uses a trained bidirectional GLNet or coarse-to-fine checkpoint of yours
instead (its sizes set the windows; G→L is then its weights without the local→global
convolutions; the baselines still get the brief training unless ``--untrained-baselines``).

Batch 1 for every case: the paper's protocol and the issue's targets, and the least memory;
on a CPU a larger batch buys little time, as each convolution already uses every thread.
``--batch-size`` changes it for all cases at once.

Duration. Cases whose time and memory do not depend on the lesion (``local_sw``, ``full_image``
and the whole-image GLNets) run at the first lesion only (``--once``; ``--every-lesion`` runs
them at every lesion, for their Jaccard there: about 25 minutes more); the FlexibleUNet
sliding window, the ratios' reference, runs at every lesion, next to the cases it is compared
with. Estimated, not measured end to end (a busy machine takes several times longer), from the
issue's timings of each case on this project's idle 2-core CPU and a FLOP count of training
(a training step costs about three forward passes): preparation about 13 minutes (images 1,
global stage 6, local stage 3, the baselines 3), the sliding window about 75 s per image,
coarse-to-fine ``box`` about 1, 2 and 7 minutes at the three lesions (the box of a 50% lesion is
the whole image), ``uncertain`` at most as long, the once-cases about 15 minutes together:
**about 45-50 minutes** in all.

    python benchmarks/inference_speed.py --csv speed.csv --plot speed.png     # the issue's run, ~45 min
    python benchmarks/inference_speed.py --every-lesion                       # every case at every lesion
    python benchmarks/inference_speed.py --checkpoint RUN/checkpoints/best.pt --untrained-baselines
    python benchmarks/inference_speed.py --device cuda --work-dir W           # a GPU, the paper's protocol,
    python benchmarks/inference_speed.py --device cuda --work-dir W --reuse --amp bf16   # then bf16, same weights
    python benchmarks/inference_speed.py --quick                              # tiny, ResNet18: a smoke test

``--plot`` draws time and peak memory against Jaccard per method (the paper's Figure 1 analogue);
methods without a meaningful Jaccard (untrained) appear as horizontal lines at their cost.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, however this file is loaded
from _common import flexible_unet, flexible_unet_logits, sliding_window_mask, transfer  # noqa: E402

SCRIPT = Path(__file__).resolve()

CASES: dict[str, str] = {
    "flexible_unet_sw": "MONAI sliding window, FlexibleUNet",
    "local_sw": "MONAI sliding window, glmed local branch",
    "full_image": "full image at once, glmed local branch",
    "glnet_g2l": "GLNet whole image, G→L",
    "glnet_bidirectional": "GLNet whole image, G⇄L",
    "glnet_bidirectional_kept": "GLNet whole image, G⇄L, reuse_encoder",
    "c2f_box": "coarse-to-fine G⇄L, refine=box",
    "c2f_uncertain": "coarse-to-fine G⇄L, refine=uncertain",
}
"""Every case, by key, with its label in the table, in the order they run at each lesion."""

REFERENCE = "flexible_unet_sw"
"""The case the ratio columns divide by (the same lesion's row)."""

TEST_SEED = 0
"""Seed of the first test image (one per lesion, seeds counting up)."""

TRAIN_SEED = 1000
"""Seed of the first training image: far from the test images' seeds."""

FULL_IMAGE_BYTES_PER_PIXEL = 620
"""Peak bytes per pixel of the ResNet50-FPN256 local branch over a whole image at once.

Measured with ``benchmarks/predict_memory.py``: 18.4 GB added at 6748×4499 (docs/benchmarks.md);
used, with a 5% margin, to skip ``full_image`` where the memory is not there (smaller networks
need less, so it errs on the safe side for them)."""


class Settings(NamedTuple):
    """One run's sizes, cases and training budget.

    A named tuple rather than a dataclass, so the script also works loaded from its path
    (``importlib``) without being registered as a module.

    Attributes:
        size: ``(height, width)`` of every generated image.
        lesions: lesion fractions of the test images, one image each.
        backbone: every network's ResNet (the GLNets' and FlexibleUNet's encoder).
        fpn_channels, global_size, patch_size, overlap: GLNet's sizes (windows and overlap of
            the sliding windows too); a ``--checkpoint`` replaces them with its own.
        batch_size: patches or windows per forward pass, the same for every case.
        cases: the cases run, keys of :data:`CASES`.
        once: cases run at the first lesion only (their time and memory do not depend on it).
        train_images: generated training images (lesions spread from 4% to 60%).
        epochs: epochs of the global, local and bidirectional stages (none of the last by
            default: see the module's docstring).
        bidirectional_images: the training images with the smallest lesions the bidirectional
            stage sees (its collect pass reads every patch of their boxes).
        images_per_step, patches_per_image: the local budget per step: images, patches of each.
        lr: Adam learning rate of every part and of the baselines (a tenth of it in the
            bidirectional stage).
        norm_batches: training batches the batch-norm statistics are re-estimated from after
            each training (:func:`reestimate_batch_norm`).
        train_baselines: train FlexibleUNet and the local-only GLNet with the local budget.
        checkpoint: a trained bidirectional GLNet / coarse-to-fine checkpoint instead of training.
        device: ``cpu`` or ``cuda[:N]``.
        threads: torch threads in every child (None: torch's default).
        margin: ``refine="uncertain"``'s margin (None: predict's default).
        skip_full_image: never run ``full_image``.
        seed: seed of weights and training draws.
        amp: ``"bf16"`` runs every case's inference under bfloat16 autocast (glmed's ``amp=``,
            ``torch.autocast`` around the baselines' networks); ``"off"``: float32. Training is
            float32 either way. Worth it where the device computes bfloat16 natively (recent
            GPUs, CPUs with AMX/AVX512-BF16); on other CPUs it is many times slower.
    """

    size: tuple[int, int] = (4499, 6748)
    lesions: tuple[float, ...] = (0.10, 0.25, 0.50)
    backbone: str = "resnet50"
    fpn_channels: int = 256
    global_size: int = 508
    patch_size: int = 508
    overlap: int = 50
    batch_size: int = 1
    cases: tuple[str, ...] = tuple(CASES)
    once: tuple[str, ...] = ("local_sw", "full_image", "glnet_g2l", "glnet_bidirectional", "glnet_bidirectional_kept")
    train_images: int = 12
    epochs: tuple[int, int, int] = (12, 2, 0)
    bidirectional_images: int = 2
    images_per_step: int = 2
    patches_per_image: int = 2
    lr: float = 1e-3
    norm_batches: int = 8
    train_baselines: bool = True
    checkpoint: str | None = None
    device: str = "cpu"
    threads: int | None = None
    margin: float | None = None
    skip_full_image: bool = False
    seed: int = 0
    amp: str = "off"


QUICK = Settings(size=(192, 256), backbone="resnet18", fpn_channels=32, global_size=64, patch_size=64, overlap=8,
                 train_images=4, epochs=(3, 2, 1), norm_batches=2, once=(), threads=1)
"""``--quick``: tiny images, ResNet18-FPN32, 64-pixel views, every case at every lesion, one torch thread
(tiny tensors gain nothing from more, and on a busy machine threads wait on each other): a smoke test."""


# -- measuring ------------------------------------------------------------------------


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return _maxrss_mb()


def _reset_peak() -> bool:
    """Reset the resident high-water mark (which ``ru_maxrss`` reports) to the current size."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _available_bytes(device: Any) -> int:
    """Free memory where ``full_image`` would run: the GPU's, or the host's ``MemAvailable``."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def jaccard(truth: np.ndarray, mask: np.ndarray) -> float:
    """The ISIC 2018 Jaccard of a mask against the truth (foreground: any non-zero class)."""
    from glmed.metrics.validation import IsicMetric

    metric = IsicMetric()
    return metric.reduce([metric.measure(truth, mask)])["jaccard"]


def box_note(boxes: Sequence[Sequence[int]], truth: np.ndarray) -> str:
    """Whether the refined boxes found the lesion: their share of the image, of the lesion, their size against it.

    A box "found the lesion" when it holds at least 95% of it and is at most 3 times its area
    (the paper's 1:1 relaxed box is about twice a compact lesion's area).
    """
    if not boxes:
        return "no box: the global branch found no lesion"
    inside = np.zeros(truth.shape, dtype=bool)
    for r0, c0, r1, c1 in boxes:
        inside[r0:r1, c0:c1] = True
    lesion = int(np.count_nonzero(truth))
    held = int(np.count_nonzero(truth[inside])) / lesion if lesion else 1.0
    size = int(np.count_nonzero(inside)) / lesion if lesion else math.inf
    verdict = "found the lesion" if held >= 0.95 and size <= 3 else "did NOT find the lesion tightly"
    return (f"{verdict}: {len(boxes)} box{'es' if len(boxes) > 1 else ''} {list(map(list, boxes))}, "
            f"{inside.mean():.1%} of the image, {size:.1f}× the lesion's area, holding {held:.1%} of it")


# -- networks -------------------------------------------------------------------------


def local_branch_logits(model: Any, x: Any) -> Any:
    """A local-only GLNet's logits for a batch of windows (or a whole image), at their size."""
    return model.local_logits(model.local_features(x), tuple(x.shape[-2:]))


def glnet_sizes(settings: Settings) -> dict[str, Any]:
    """GLNet keyword arguments of this run's sizes."""
    return {"fpn_channels": settings.fpn_channels, "global_size": settings.global_size,
            "patch_size": settings.patch_size, "overlap": settings.overlap}


# -- preparation: test images and weights (one child process) -------------------------------


def training_fractions(count: int) -> np.ndarray:
    """Lesion fractions of the training images: spread geometrically from 4% to 60%."""
    return np.geomspace(0.04, 0.60, count) if count > 1 else np.array([0.2])


def prepare(settings: Settings, folder: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Generate the test images and train (or load) every network; runs in a child process.

    Returns:
        The test images' paths and lesion fractions, the weights' paths, the sizes the cases
        use, and what the training did (steps, patches, seconds).
    """
    import torch

    import glmed
    from glmed.data.synthetic import make_dermoscopy_image

    if settings.threads:
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    tests = []
    for index, fraction in enumerate(settings.lesions):
        image, truth = make_dermoscopy_image(settings.size, TEST_SEED + index, lesion_fraction=fraction)
        paths = {"image": str(folder / f"test_{index}_image.npy"), "truth": str(folder / f"test_{index}_truth.npy")}
        np.save(paths["image"], image)
        np.save(paths["truth"], truth)
        tests.append({**paths, "fraction": float(truth.mean())})
        del image, truth
    info: dict[str, Any] = {"tests": tests, "training": {}, "weights": {}}
    log(f"test images generated in {time.perf_counter() - started:.0f} s")
    needs_training = settings.checkpoint is None or settings.train_baselines
    train = []
    if needs_training:
        started = time.perf_counter()
        train = [make_dermoscopy_image(settings.size, TRAIN_SEED + index, lesion_fraction=float(fraction))
                 for index, fraction in enumerate(training_fractions(settings.train_images))]
        log(f"{len(train)} training images generated in {time.perf_counter() - started:.0f} s")
    if settings.checkpoint is not None:
        model = glmed.load_model(settings.checkpoint)
        if model.sharing.value != "bidirectional":
            raise ValueError(f"--checkpoint needs a bidirectional GLNet or coarse-to-fine model; {settings.checkpoint} "
                             f"is {model.sharing.value!r}")
        info["weights"].update(c2f=settings.checkpoint, g2l=settings.checkpoint)
        info["training"]["glnet"] = f"from {settings.checkpoint}"
        config = model.config
        settings = settings._replace(backbone=config.backbone, fpn_channels=config.fpn_channels,
                                     global_size=config.global_size, patch_size=config.patch_size,
                                     overlap=config.overlap)
    else:
        info["training"]["glnet"] = train_glnet(settings, train, folder, info["weights"], log)
    if settings.train_baselines:
        steps, patches = local_budget(settings)
        for case, name in (("flexible_unet_sw", "flexible_unet"), ("local_sw", "local_only")):
            if case in settings.cases or (case == "local_sw" and "full_image" in settings.cases):
                info["training"][name] = train_baseline(name, settings, train, steps, patches, folder,
                                                        info["weights"], log)
    info["sizes"] = {name: getattr(settings, name) for name in ("backbone", "fpn_channels", "global_size",
                                                                  "patch_size", "overlap")}
    return info


def local_budget(settings: Settings) -> tuple[int, int]:
    """Steps and patches per step of the coarse-to-fine local stage (what the baselines get too)."""
    steps = settings.epochs[1] * math.ceil(settings.train_images / settings.images_per_step)
    return steps, settings.images_per_step * settings.patches_per_image


def batch_norms(modules: Sequence[Any]) -> list[Any]:
    """Every batch-norm layer inside ``modules``."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [layer for module in modules for layer in module.modules() if isinstance(layer, _BatchNorm)]


def reestimate_batch_norm(norms: Sequence[Any], forward_passes: Callable[[], None]) -> None:
    """Replace the running statistics of ``norms`` by plain averages over ``forward_passes``' batches.

    A brief training leaves the running averages (momentum 0.1) far from the final network's
    statistics: measured on the mid-size check, FlexibleUNet after 12 steps called 69-79% of
    pure-skin windows lesion with its running averages and 2-13% with batch statistics. So
    every network here, after its training (each GLNet stage's trained parts after that stage),
    gets them re-estimated from training batches run as in training (no gradients).
    """
    import torch

    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average
    with torch.no_grad():
        forward_passes()
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum


def train_glnet(settings: Settings, train: list, folder: Path, weights: dict[str, str],
                log: Callable[[str], None]) -> str:
    """Train the bidirectional coarse-to-fine GLNet stage by stage; save the G→L and final weights.

    Each stage is one ``glmed.fit`` call, followed (global and local stages) by re-estimating
    the batch-norm statistics of the parts it trained (:func:`reestimate_batch_norm`), before the
    next stage builds on them.
    """
    import torch

    import glmed
    from glmed.data.samples import collate_global_local
    from glmed.data.stage_samples import StageSampler
    from glmed.training.stages import paper_stages
    from glmed.training.trainer import GLNetTrainer

    torch.manual_seed(settings.seed)
    model = glmed.CoarseToFineGLNet(2, settings.backbone, "bidirectional", **glnet_sizes(settings))
    model.to(settings.device)  # the trainer runs where the model is
    with torch.no_grad():  # local→global starts silent: untrained, it would only add noise to the global maps
        for conv in model.global_partner or []:
            conv.weight.zero_()
    patches_per_step = settings.images_per_step * settings.patches_per_image
    sampler = StageSampler(model.config, patches_per_image=settings.patches_per_image)
    global_stage, local_stage, both_stage = paper_stages("bidirectional", settings.epochs)
    rng = np.random.default_rng(settings.seed + 1)
    started = time.perf_counter()

    def fit_stage(stage: Any, images: list, lr: float, images_per_step: int) -> Any:
        trainer = GLNetTrainer(model, global_lr=lr, local_lr=lr, patches_per_step=patches_per_step)
        glmed.fit(model, images, stages=[stage], trainer=trainer, sampler=sampler, images_per_step=images_per_step,
                  seed=settings.seed, progress=False, num_workers=0, log=lambda line: log(f"  {stage.name}: {line}"))
        return trainer

    def reestimate(trainer: Any, stage: Any) -> None:
        def passes() -> None:
            trainer.prepare(stage)  # the trained parts in training mode, the rest as the stage had them
            for _ in range(settings.norm_batches):
                chosen = rng.choice(len(train), size=min(settings.images_per_step, len(train)), replace=False)
                trainer.losses(stage, collate_global_local([sampler(stage, *train[i], rng) for i in chosen]))
        reestimate_batch_norm(batch_norms(trainer.parts(stage.trainable)), passes)
        model.eval()

    for stage in (global_stage, local_stage):
        if stage.epochs > 0:
            reestimate(fit_stage(stage, train, settings.lr, settings.images_per_step), stage)
    weights["g2l"] = str(glmed.save_model(model, folder / "g2l.pt"))
    smallest = [train[i] for i in np.argsort([label.mean() for _, label in train])[: settings.bidirectional_images]]
    if both_stage.epochs > 0 and smallest:
        fit_stage(both_stage, smallest, settings.lr / 10, len(smallest))
    weights["c2f"] = str(glmed.save_model(model, folder / "c2f_bidirectional.pt"))
    global_steps = global_stage.epochs * math.ceil(len(train) / settings.images_per_step)
    local_steps, patches = local_budget(settings)
    both = (f"bidirectional {both_stage.epochs} step(s) on the {len(smallest)} smallest lesions at lr/10"
            if both_stage.epochs > 0 and smallest else
            "no bidirectional stage (local→global convolutions zero: G⇄L computes G→L's answer at G⇄L's cost)")
    return (f"trained here: global {global_steps} steps of {settings.images_per_step} images, local {local_steps} "
            f"steps of {patches} patches, {both}; batch norm re-estimated from {settings.norm_batches} batches "
            f"per stage; {(time.perf_counter() - started) / 60:.1f} min")


def sample_windows(train: list, count: int, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` training windows of ``side`` pixels: images at random, half centred on a lesion pixel.

    Returns:
        ``count×side×side×3`` uint8 pixels and ``count×side×side`` labels.
    """
    pixels, labels = [], []
    for _ in range(count):
        image, label = train[int(rng.integers(len(train)))]
        height, width = label.shape
        h, w = min(side, height), min(side, width)
        if rng.random() < 0.5 and label.any():
            rows, cols = np.nonzero(label[:: max(1, height // 256), :: max(1, width // 256)])
            pick = int(rng.integers(len(rows)))
            centre = (rows[pick] * max(1, height // 256), cols[pick] * max(1, width // 256))
            top = int(np.clip(centre[0] - h // 2, 0, height - h))
            left = int(np.clip(centre[1] - w // 2, 0, width - w))
        else:
            top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
        pixels.append(image[top : top + h, left : left + w])
        labels.append(label[top : top + h, left : left + w])
    return np.stack(pixels), np.stack(labels)


def train_baseline(name: str, settings: Settings, train: list, steps: int, patches: int, folder: Path,
                   weights: dict[str, str], log: Callable[[str], None]) -> str:
    """Train FlexibleUNet or the local-only GLNet with the local budget: focal loss, Adam, windows."""
    import torch

    import glmed
    from glmed.data.normalize import to_model_input
    from glmed.models.losses import FocalLoss

    torch.manual_seed(settings.seed)
    if name == "flexible_unet":
        net = flexible_unet(settings.backbone)
        forward = partial(flexible_unet_logits, net)
    else:
        net = glmed.GLNet(2, settings.backbone, "local_only", **glnet_sizes(settings))
        forward = partial(local_branch_logits, net)
    net.to(settings.device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    loss_fn = FocalLoss(6.0)  # GLNetLoss's γ, the paper's
    rng = np.random.default_rng(settings.seed)
    started = time.perf_counter()
    losses = []
    for _ in range(steps):
        pixels, labels = sample_windows(train, patches, settings.patch_size, rng)
        optimizer.zero_grad(set_to_none=True)
        target = torch.from_numpy(labels.astype(np.int64)).to(settings.device)
        loss = loss_fn(forward(to_model_input(pixels).to(settings.device)), target)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    def passes() -> None:
        net.train()
        for _ in range(settings.norm_batches):
            pixels, _ = sample_windows(train, patches, settings.patch_size, rng)
            forward(to_model_input(pixels).to(settings.device))

    reestimate_batch_norm(batch_norms([net]), passes)
    net.cpu().eval()
    if name == "flexible_unet":
        path = folder / "flexible_unet.pt"
        torch.save(net.state_dict(), path)
    else:
        path = glmed.save_model(net, folder / "local_only.pt")
    weights[name] = str(path)
    seconds = time.perf_counter() - started
    log(f"  {name}: {steps} steps of {patches} windows, loss {losses[0]:.4f} → {losses[-1]:.4f}, {seconds:.0f} s")
    return (f"trained here: {steps} steps of {patches} windows (the local budget), batch norm re-estimated from "
            f"{settings.norm_batches} batches; {seconds / 60:.1f} min")


# -- one case (one child process) -----------------------------------------------------


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the case's network, load the image, run inference once; time, memory, Jaccard, notes."""
    import torch

    settings = Settings(**{**spec["settings"], "size": tuple(spec["settings"]["size"])})
    case, device = spec["case"], torch.device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    row: dict[str, Any] = {"case": case}
    image, truth = np.load(spec["image"]), np.load(spec["truth"])
    height, width = truth.shape
    if case == "full_image":
        needed = height * width * FULL_IMAGE_BYTES_PER_PIXEL
        free = _available_bytes(device)
        if settings.skip_full_image or needed * 1.05 > free:
            why = ("--skip-full-image" if settings.skip_full_image else
                   f"needs about {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on {device}")
            return {**row, "status": "skipped", "notes": why}
    network, weights = build(case, settings, spec["weights"])
    row["weights"] = weights
    network.to(device)
    _import_for(case)  # imports are not inference: done before the clock starts
    gc.collect()
    if device.type == "cuda":
        warm = torch.ones(64, 64, device=device)
        (warm @ warm).sum().item()  # the CUDA context and cuBLAS start before the clock
        del warm
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    resettable = _reset_peak()
    baseline = _rss_mb() if resettable else _maxrss_mb()
    start = time.perf_counter()
    mask, extra = infer(case, network, image, settings, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    row["peak_mb"] = round(_maxrss_mb() - baseline, 1)
    if device.type == "cuda":
        row["cuda_peak_mb"] = round((torch.cuda.max_memory_allocated(device) - cuda_before) / 2**20, 1)
    row.update(status="ok", seconds=round(seconds, 2), jaccard=round(jaccard(truth, mask), 4),
               patches=extra.pop("patches"), skipped=extra.pop("skipped", None))
    notes = []
    if "boxes" in extra:
        notes.append(box_note(extra["boxes"], truth))
    notes += extra.get("notes", [])
    row["notes"] = "; ".join(notes)
    return row


def build(case: str, settings: Settings, weights: dict[str, str]) -> tuple[Any, str]:
    """The case's network in evaluation mode, and where its weights came from."""
    import torch

    import glmed

    torch.manual_seed(settings.seed)
    if case == "flexible_unet_sw":
        net = flexible_unet(settings.backbone)
        if "flexible_unet" not in weights:
            return net.eval(), "untrained"
        net.load_state_dict(torch.load(weights["flexible_unet"], map_location="cpu", weights_only=True))
        return net.eval(), "trained here"
    if case in ("local_sw", "full_image"):
        if "local_only" not in weights:
            return glmed.GLNet(2, settings.backbone, "local_only", **glnet_sizes(settings)).eval(), "untrained"
        return glmed.load_model(weights["local_only"]), "trained here"
    source = weights["g2l"] if case == "glnet_g2l" else weights["c2f"]
    loaded = glmed.load_model(source)
    kind = "c2f" if case.startswith("c2f") else "glnet"
    model = transfer(loaded.state_dict(), loaded.config, kind, "g2l" if case == "glnet_g2l" else "bidirectional")
    return model, "checkpoint" if settings.checkpoint else "trained here"


def _import_for(case: str) -> None:
    """Import what :func:`infer` will use for ``case`` (MONAI's inferer, or glmed's, which loads lazily)."""
    if case.endswith("_sw"):
        import monai.inferers  # noqa: F401
    elif case != "full_image":
        import glmed.inference.inferer  # noqa: F401


def infer(case: str, network: Any, image: np.ndarray, settings: Settings, device: Any) -> tuple[np.ndarray, dict]:
    """One inference of the case on ``image``; returns the mask and what to report (patches, boxes, notes)."""
    import torch

    from glmed.data.normalize import to_model_input

    autocast = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if settings.amp == "bf16"
                else contextlib.nullcontext())
    if case in ("flexible_unet_sw", "local_sw"):
        network_logits = flexible_unet_logits if case == "flexible_unet_sw" else local_branch_logits

        def logits_of(tiles: Any) -> Any:
            with autocast:
                return network_logits(network, tiles).float()  # stitched in float32, as glmed does

        mask, windows = sliding_window_mask(logits_of, image, settings.patch_size, settings.overlap,
                                            settings.batch_size, device)
        return mask, {"patches": windows}
    if case == "full_image":
        with torch.inference_mode(), autocast:
            logits = local_branch_logits(network, to_model_input(image)[None].to(device))
            mask = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
        return mask, {"patches": 1}
    import inspect

    import glmed

    options: dict[str, Any] = {"batch_size": settings.batch_size, "with_coarse": False, "thumbnail": False}
    if settings.amp != "off":
        options["amp"] = settings.amp
    if case == "glnet_bidirectional_kept":
        options["reuse_encoder"] = True
    if case == "c2f_uncertain":
        options["refine"] = "uncertain"
        if settings.margin is not None:
            options["margin"] = settings.margin
    elif case == "c2f_box" and "refine" in inspect.signature(glmed.predict).parameters:
        options["refine"] = "box"  # the default, and all there is before refine= exists
    result = glmed.predict(network, image, **options)
    extra: dict[str, Any] = {"patches": int(result.patches), "notes": list(result.notes)}
    if getattr(result, "patches_skipped", None) is not None:
        extra["skipped"] = int(result.patches_skipped)
    if case.startswith("c2f"):
        extra["boxes"] = [[int(v) for v in box] for box in result.boxes]
    return result.mask, extra


# -- the run (parent process) ---------------------------------------------------------


RESULT = "RESULT "
"""Prefix of the line a child process prints its JSON result on; its other lines are passed on."""


def child(arguments: dict[str, Any], log: Callable[[str], None] = print) -> tuple[dict[str, Any] | None, str]:
    """Run this script as a fresh process on ``arguments``; its JSON result, or None and why not.

    The child's other output lines go to ``log`` as they come (training prints a line per epoch).
    """
    result = None
    with tempfile.TemporaryFile("w+") as errors:
        with subprocess.Popen([sys.executable, str(SCRIPT), "--child", json.dumps(arguments)],
                              stdout=subprocess.PIPE, stderr=errors, text=True) as process:
            assert process.stdout is not None  # piped above
            for line in process.stdout:
                if line.startswith(RESULT):
                    result = json.loads(line[len(RESULT):])
                elif line.strip():
                    log(line.rstrip())
        errors.seek(0)
        lines = [line for line in errors.read().splitlines() if line.strip()]
    if process.returncode == 0 and result is not None:
        return result, ""
    if process.returncode < 0:
        return None, f"killed by signal {-process.returncode}" + (" (out of memory?)" if process.returncode == -9
                                                                   else "")
    return None, lines[-1] if lines else f"exit status {process.returncode}"


def finish(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The table: one row per lesion and case, with the ratios to the same lesion's reference row."""
    table = pd.DataFrame(rows)
    for column in ("weights", "patches", "skipped", "seconds", "peak_mb", "jaccard", "notes"):
        if column not in table:
            table[column] = np.nan if column not in ("weights", "notes") else ""
    reference = table[(table["case"] == REFERENCE) & (table["status"] == "ok")].set_index("lesion")
    for column, source in (("time_x", "seconds"), ("memory_x", "peak_mb")):
        base = table["lesion"].map(reference[source]) if len(reference) else np.nan
        table[column] = (table[source] / base).round(3)
    table["method"] = table["case"].map(CASES)
    order = ["lesion", "case", "method", "weights", "status", "patches", "skipped", "seconds", "peak_mb",
             "cuda_peak_mb", "time_x", "memory_x", "jaccard", "notes"]
    return table[[name for name in order if name in table] + [name for name in table if name not in order]]


PREPARED = "prepared.json"
"""What preparation made (images, weights, training lines), kept in ``--work-dir`` for ``--reuse``."""


def reused_tests(tests: list[dict[str, Any]], lesions: Sequence[float]) -> list[dict[str, Any]]:
    """The prepared test images nearest to each wanted lesion fraction, in the prepared order."""
    wanted = {min(range(len(tests)), key=lambda index: abs(tests[index]["fraction"] - lesion)) for lesion in lesions}
    return [test for index, test in enumerate(tests) if index in wanted]


def run(
    settings: Settings, work_dir: Path | None = None, log: Callable[[str], None] = print, reuse: bool = False
) -> pd.DataFrame:
    """Prepare images and weights, then run every case at every lesion, each in a fresh process.

    With ``reuse``, the images and weights an earlier run left in ``work_dir`` (its
    :data:`PREPARED` record) are used as they are: to time some cases again, e.g. on a quieter
    machine, without training again.
    """
    owned = work_dir is None
    folder = Path(tempfile.mkdtemp(prefix="glmed-inference-speed-")) if owned else Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / PREPARED
    try:
        started = time.perf_counter()
        if reuse:
            if not record.is_file():
                raise RuntimeError(f"--reuse: {record} does not exist; run once with --work-dir {folder} first")
            prepared = json.loads(record.read_text())
            prepared["tests"] = reused_tests(prepared["tests"], settings.lesions)
            log(f"reusing the images and weights of {record}")
        else:
            prepared, why = child({"role": "prepare", "settings": settings._asdict(), "folder": str(folder)}, log)
            if prepared is None:
                raise RuntimeError(f"preparing the images and weights failed: {why}")
            if not owned:
                record.write_text(json.dumps(prepared, indent=1))
            log(f"prepared in {(time.perf_counter() - started) / 60:.1f} min")
        settings = settings._replace(**prepared["sizes"])
        rows = []
        for index, test in enumerate(prepared["tests"]):
            lesion = round(test["fraction"], 4)
            for case in settings.cases:
                row: dict[str, Any] = {"lesion": lesion, "case": case}
                if index > 0 and case in settings.once:
                    row.update(status="not run", notes="run at the first lesion only (--once; --every-lesion runs it)")
                    rows.append(row)
                    continue
                result, why = child({"role": "case", "case": case, "settings": settings._asdict(),
                                     "image": test["image"], "truth": test["truth"], "weights": prepared["weights"]},
                                    log)
                row.update(result if result is not None else {"status": "failed", "notes": why})
                row["lesion"] = lesion
                rows.append(row)
                log(f"lesion {lesion:.0%} | {CASES[case]}: {row['status']}"
                    + (f", {row['seconds']:.1f} s, {row['peak_mb']:.0f} MB, Jaccard {row['jaccard']:.3f}"
                       if row["status"] == "ok" else f" ({row.get('notes', '')})"))
        table = finish(rows)
        table.attrs["training"] = prepared["training"]
        table.attrs["sizes"] = prepared["sizes"]
        return table
    finally:
        if owned:
            shutil.rmtree(folder, ignore_errors=True)


def shown(table: pd.DataFrame, cuda: bool) -> pd.DataFrame:
    """The printed table: lesion as a percentage, numbers rounded, untrained Jaccards marked."""
    out = pd.DataFrame({
        "lesion": table["lesion"].map(lambda v: f"{v:.0%}"),
        "method": table["method"],
        "weights": table["weights"].fillna(""),
        "patches": table["patches"].map(_integer),
        "skipped": table["skipped"].map(_integer),
        "seconds": table["seconds"].map(lambda v: _number(v, 1)),
        "peak MB added": table["peak_mb"].map(lambda v: _number(v, 0)),
    })
    if cuda:
        out["CUDA peak MB"] = table.get("cuda_peak_mb", pd.Series(np.nan, index=table.index)).map(
            lambda v: _number(v, 0))
    out["time ×SW"] = table["time_x"].map(lambda v: _number(v, 2, "×"))
    out["memory ×SW"] = table["memory_x"].map(lambda v: _number(v, 2, "×"))
    untrained = table["weights"].eq("untrained")
    out["Jaccard"] = [f"{_number(v, 3)} (untrained)" if flag and v == v else _number(v, 3)
                      for v, flag in zip(table["jaccard"], untrained, strict=True)]
    out["status"] = table["status"]
    return out


def _number(value: Any, digits: int, suffix: str = "") -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}{suffix}"


def _integer(value: Any) -> str:
    return "–" if value is None or value != value else str(int(value))


def _two_and_five(value: float, _: Any) -> str:
    """A log axis' minor tick label at 2 and 5 times a power of ten only (the rest would crowd)."""
    mantissa = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0
    return f"{value:g}" if round(mantissa, 6) in (2.0, 5.0) else ""


def plot(table: pd.DataFrame, path: Path) -> None:
    """Time and peak memory against Jaccard, a marker per method and lesion (the paper's Figure 1 analogue).

    Drawn on a :class:`~matplotlib.figure.Figure` with an Agg canvas, never through pyplot. Methods
    with untrained weights have no meaningful Jaccard: they are drawn as dashed horizontal lines at
    their cost (the median over the lesions run).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    figure = Figure(figsize=(12, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    colours = dict(zip(CASES, ["tab:grey", "tab:brown", "tab:pink", "tab:blue", "tab:purple", "tab:olive",
                               "tab:green", "tab:red"], strict=True))
    markers = dict(zip(CASES, ["s", "D", "P", "^", "v", "X", "o", "*"], strict=True))
    done = table[table["status"] == "ok"]
    for axis, column, label in ((axes[0], "seconds", "inference time, s"),
                                (axes[1], "peak_mb", "peak memory added, MB")):
        for case, rows in done.groupby("case", sort=False):
            trained = rows[rows["weights"] != "untrained"]
            if len(trained):
                axis.plot(trained["jaccard"], trained[column], marker=markers[case], linestyle="none",
                          color=colours[case], label=CASES[case], markersize=9)
                for _, row in trained.iterrows():
                    axis.annotate(f"{row['lesion']:.0%}", (row["jaccard"], row[column]), textcoords="offset points",
                                  xytext=(5, 4), fontsize=7, color=colours[case])
            else:
                axis.axhline(float(rows[column].median()), linestyle="--", color=colours[case],
                             label=f"{CASES[case]} (untrained: cost only)")
        axis.set_xlabel("Jaccard against the generated truth")
        axis.set_ylabel(label)
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.yaxis.set_minor_formatter(FuncFormatter(_two_and_five))
        axis.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    axes[0].set_title("time against accuracy (labels: lesion share)")
    axes[1].set_title("memory against accuracy")
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figure.savefig(path, format="png")


# -- command line ---------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    """The settings of ``--quick`` or the full run, with the options given."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny images, ResNet18: a smoke test of every path")
    parser.add_argument("--size", nargs=2, type=int, metavar=("HEIGHT", "WIDTH"), help="image size (4499 6748)")
    parser.add_argument("--lesions", nargs="+", type=float, help="lesion fractions, one image each (0.10 0.25 0.50)")
    parser.add_argument("--backbone", help="every network's ResNet (resnet50)")
    parser.add_argument("--fpn-channels", type=int, help="GLNet FPN width (256)")
    parser.add_argument("--batch-size", type=int, help="patches or windows per pass, every case (1)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), help="cases to run (all)")
    parser.add_argument("--once", nargs="*", choices=list(CASES),
                        help="cases run at the first lesion only (local_sw full_image glnet_g2l glnet_bidirectional "
                             "glnet_bidirectional_kept)")
    parser.add_argument("--every-lesion", action="store_true", help="every case at every lesion (--once with none)")
    parser.add_argument("--train-images", type=int, help="generated training images (12)")
    parser.add_argument("--epochs", nargs=3, type=int, metavar=("GLOBAL", "LOCAL", "BOTH"),
                        help="epochs of the three stages (12 2 0)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (1e-3)")
    parser.add_argument("--untrained-baselines", action="store_true",
                        help="run FlexibleUNet and the local branch untrained (time and memory only)")
    parser.add_argument("--checkpoint", help="a trained bidirectional GLNet or coarse-to-fine checkpoint: no training")
    parser.add_argument("--device", help="cpu or cuda[:N] (cpu)")
    parser.add_argument("--amp", choices=["off", "bf16"],
                        help="bfloat16 autocast for every case's inference (off); run once with and once without")
    parser.add_argument("--threads", type=int, help="torch threads in every child (torch's default)")
    parser.add_argument("--margin", type=float, help="refine='uncertain' margin (predict's default)")
    parser.add_argument("--skip-full-image", action="store_true", help="never run the full image at once")
    parser.add_argument("--seed", type=int, help="seed of weights and training draws (0)")
    parser.add_argument("--work-dir", type=Path,
                        help="keep test images and weights here, e.g. for a later --checkpoint "
                             "DIR/c2f_bidirectional.pt (default: a temporary folder, removed)")
    parser.add_argument("--reuse", action="store_true",
                        help="use the images and weights an earlier run left in --work-dir (no training)")
    parser.add_argument("--csv", type=Path, help="also write the table (with notes) here")
    parser.add_argument("--plot", type=Path, help="also draw time and memory against Jaccard (PNG) here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    given: dict[str, Any] = {name: getattr(args, name) for name in (
        "size", "lesions", "backbone", "fpn_channels", "batch_size", "cases", "once", "train_images", "epochs", "lr",
        "checkpoint", "device", "threads", "margin", "seed", "amp") if getattr(args, name) is not None}
    given = {name: tuple(value) if isinstance(value, list) else value for name, value in given.items()}
    if args.every_lesion:
        given["once"] = ()
    if args.untrained_baselines:
        given["train_baselines"] = False
    if args.skip_full_image:
        given["skip_full_image"] = True
    settings = settings._replace(**given)
    if args.child is None:
        if args.reuse and args.work_dir is None:
            parser.error("--reuse needs --work-dir, the folder an earlier run prepared")
        if not settings.lesions or not all(0 < f < 1 for f in settings.lesions):
            parser.error("--lesions must be fractions in (0, 1)")
        if min(settings.batch_size, settings.train_images, settings.images_per_step) < 1:
            parser.error("--batch-size and --train-images need at least 1")
        if settings.checkpoint is None and settings.epochs[0] + settings.epochs[1] < 1:
            parser.error("training needs at least one global or local epoch (or give --checkpoint)")
    return settings, args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden ``--child``, one part of it); returns the exit status."""
    settings, args = parse(argv)
    if args.child is not None:
        spec = json.loads(args.child)
        if spec["role"] == "prepare":
            given = {**spec["settings"], "size": tuple(spec["settings"]["size"])}
            result = prepare(Settings(**given), Path(spec["folder"]), log=lambda line: print(line, flush=True))
        else:
            result = run_case(spec)
        print(RESULT + json.dumps(result), flush=True)
        return 0
    started = time.perf_counter()
    try:
        table = run(settings, args.work_dir, reuse=args.reuse)
    except RuntimeError as error:  # nothing can run without images and weights
        print(error, file=sys.stderr)
        return 1
    minutes = (time.perf_counter() - started) / 60
    sizes = table.attrs["sizes"]
    threads = settings.threads or "torch's default"
    precision = "bfloat16 autocast" if settings.amp == "bf16" else "float32"
    print(f"\n{settings.size[0]}×{settings.size[1]} generated dermoscopy images, {settings.device} ({precision}), "
          f"{threads} thread(s), batch {settings.batch_size} everywhere; {sizes['backbone']} everywhere "
          f"(GLNet FPN {sizes['fpn_channels']}, global {sizes['global_size']}, windows/patches {sizes['patch_size']}, "
          f"overlap {sizes['overlap']}); each case in a fresh process; {minutes:.1f} min in all")
    for name, line in table.attrs["training"].items():
        print(f"weights, {name}: {line}")
    print(shown(table, settings.device.startswith("cuda")).to_string(index=False))
    print("\nnotes:")
    for _, row in table.iterrows():
        if isinstance(row["notes"], str) and row["notes"]:
            print(f"  {row['lesion']:.0%} {row['method']}: {row['notes']}")
    if args.csv is not None:
        table.to_csv(args.csv, index=False)
    if args.plot is not None:
        plot(table, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
