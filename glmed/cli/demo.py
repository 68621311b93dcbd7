"""``glmed demo``: the whole GLNet loop on generated dermoscopy images in a few minutes on a CPU.

Generates a handful of dermoscopy-like images, trains a small GLNet in the paper's stages
(global branch, then local branch with global→local sharing), segments a held-out image
at full resolution, and reports its IoU and the ISIC thresholded IoU. Outputs (the mask,
and an overlay when matplotlib is installed) are written atomically to ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``glmed demo``."""
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument("--images", type=int, default=6, help="generated training images (default: 6)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per stage (default: 60)")
    parser.add_argument("--size", type=int, nargs=2, default=(768, 1024), metavar=("HEIGHT", "WIDTH"),
                        help="size of the generated images (default: 768 1024)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Train, predict and report; returns the exit code."""
    import numpy as np
    import torch

    from glmed.data.samples import collate_global_local, global_local_sample
    from glmed.data.synthetic import make_dermoscopy_image
    from glmed.inference.inferer import predict
    from glmed.training.trainer import GLNetTrainer
    from glmed.training.stages import paper_stages
    from glmed.geometry import patch_grid
    from glmed.io.writers import write_mask_png
    from glmed.models.glnet import GLNet

    if args.images < 1 or args.steps < 1:
        raise SystemExit("glmed demo: --images and --steps must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    size = tuple(args.size)
    print(f"generating {args.images + 1} dermoscopy-like images of {size[0]}×{size[1]} ...", flush=True)
    data = [make_dermoscopy_image(size, args.seed + index) for index in range(args.images + 1)]
    (test_image, test_mask), train = data[-1], data[:-1]

    model = GLNet(2, "resnet18", "g2l", fpn_channels=64, global_size=192, patch_size=192, overlap=24)
    config = model.config
    grid = patch_grid(size, config.patch_size, config.overlap)
    trainer = GLNetTrainer(model, global_lr=1e-3, local_lr=5e-4)

    def batch() -> dict:
        chosen = rng.choice(len(train), size=2, replace=False)
        samples = []
        for index in chosen:
            image, mask = train[index]
            boxes = grid.boxes[rng.choice(len(grid), size=3, replace=False)]
            samples.append(global_local_sample(image, boxes, mask, global_size=config.global_size))
        return collate_global_local(samples)

    for stage in paper_stages(config.sharing):
        optimizer = trainer.optimizer(stage)
        trainer.prepare(stage)
        started = time.perf_counter()
        for step in range(1, args.steps + 1):
            terms = trainer.step(stage, batch(), optimizer)
            if step % 10 == 0 or step == args.steps:
                print(f"  stage {stage.name:<6} step {step:>3}/{args.steps}  loss {terms['loss']:.4f}", flush=True)
        print(f"stage {stage.name} done in {time.perf_counter() - started:.0f} s", flush=True)

    started = time.perf_counter()
    result = predict(model, test_image, batch_size=4)
    seconds = time.perf_counter() - started
    iou = _iou(result.mask, test_mask)
    write_mask_png(args.out / "prediction.png", result.mask)
    try:
        from glmed.plotting import save_result_figure

        save_result_figure(args.out / "overlay.png", test_image, result, test_mask,
                           title="truth (green) and GLNet prediction (red)")
    except ImportError:
        print("matplotlib is not installed: no overlay.png (pip install 'glmed[plot]')")
    print(f"held-out image: IoU {iou:.3f}, ISIC thresholded IoU {iou if iou >= 0.65 else 0.0:.3f}, "
          f"{result.patches} patches in {seconds:.1f} s")
    print(f"outputs in {args.out}/")
    return 0


def _iou(prediction, truth) -> float:
    prediction, truth = prediction.astype(bool), truth.astype(bool)
    union = (prediction | truth).sum()
    return float((prediction & truth).sum() / union) if union else 1.0
