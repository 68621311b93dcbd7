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
    import torch

    from glmed.data.stage_samples import StageSampler
    from glmed.data.synthetic import make_dermoscopy_image
    from glmed.inference.inferer import predict
    from glmed.io.writers import write_mask_png
    from glmed.metrics.validation import IsicMetric, score_table
    from glmed.models.glnet import GLNet
    from glmed.training.fit import fit
    from glmed.training.stages import paper_stages
    from glmed.training.trainer import GLNetTrainer

    if args.images < 1 or args.steps < 1:
        raise SystemExit("glmed demo: --images and --steps must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    size = tuple(args.size)
    print(f"generating {args.images + 1} dermoscopy-like images of {size[0]}×{size[1]} ...", flush=True)
    data = [make_dermoscopy_image(size, args.seed + index) for index in range(args.images + 1)]
    (test_image, test_mask), train = data[-1], data[:-1]

    model = GLNet(2, "resnet18", "g2l", fpn_channels=64, global_size=192, patch_size=192, overlap=24)
    images_per_step = min(2, len(train))
    steps_per_epoch = -(-len(train) // images_per_step)
    epochs = max(1, round(args.steps / steps_per_epoch))  # --steps per stage, as whole epochs
    history = fit(model, train, stages=paper_stages(model.sharing, epochs=(epochs, epochs)),
                  trainer=GLNetTrainer(model, global_lr=1e-3, local_lr=5e-4),
                  sampler=StageSampler(model.config, patches_per_image=3), images_per_step=images_per_step,
                  seed=args.seed, progress=False, log=lambda line: print(f"  {line}", flush=True))
    for stage, rows in history.groupby("stage", sort=False):
        print(f"stage {stage} done in {rows.total_seconds.sum():.0f} s", flush=True)

    started = time.perf_counter()
    result = predict(model, test_image, batch_size=4)
    seconds = time.perf_counter() - started
    metric = IsicMetric()
    scores = score_table(metric, [metric.measure(test_mask, result.mask)]).iloc[0]
    write_mask_png(args.out / "prediction.png", result.mask)
    try:
        from glmed.plotting import save_result_figure

        save_result_figure(args.out / "overlay.png", test_image, result, test_mask,
                           title="truth (sky blue) and GLNet prediction (vermillion)")
    except ImportError:
        print("matplotlib is not installed: no overlay.png (pip install 'glmed[plot]')")
    print(f"held-out image: IoU {scores.jaccard:.3f}, ISIC thresholded IoU {scores.threshold_jaccard:.3f}, "
          f"{result.patches} patches in {seconds:.1f} s")
    print(f"outputs in {args.out}/")
    return 0
