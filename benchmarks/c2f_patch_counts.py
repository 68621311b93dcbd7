"""How much coarse-to-fine saves on an ISIC-sized image: patches read and run, and time.

Both are compared with full GLNet's, with the same weights.

A 6748×4499 dermoscopy-like image with a lesion covering about a tenth of it is generated;
a small coarse-to-fine GLNet's global branch is trained briefly on other generated images
so its coarse mask finds the lesion; then the same weights segment the image once
coarse-to-fine (patches only inside the relaxed box) and once as plain GLNet (every patch).
Only counts and times are compared here (the local branch is not trained): accuracy is
compared in ``benchmarks/c2f_accuracy.py``.

    python benchmarks/c2f_patch_counts.py
    python benchmarks/c2f_patch_counts.py --backbone resnet50 --fpn-channels 256
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def lesion_seed(fraction: float, tolerance: float = 0.02) -> int:
    """The first seed whose generated lesion covers ``fraction`` of the image (± tolerance)."""
    from glmed.data.synthetic import make_dermoscopy_image

    for seed in range(1000):
        _, mask = make_dermoscopy_image((450, 675), seed)
        if abs(mask.mean() - fraction) <= tolerance:
            return seed
    raise RuntimeError(f"no seed below 1000 gives a lesion fraction of {fraction}")


def train_global_branch(model, steps: int, size: tuple, seed: int) -> None:
    """A few hundred global-stage steps on generated images, enough for a usable coarse mask."""
    from glmed.data.samples import collate_global_local, global_local_sample
    from glmed.data.synthetic import make_dermoscopy_image
    from glmed.training.stages import GLOBAL_PARTS, Stage
    from glmed.training.trainer import GLNetTrainer

    images = [make_dermoscopy_image(size, seed + 1000 + i) for i in range(8)]
    trainer = GLNetTrainer(model, global_lr=1e-3)
    stage = Stage("global", GLOBAL_PARTS)
    optimizer = trainer.optimizer(stage)
    trainer.prepare(stage)
    rng = np.random.default_rng(seed)
    no_boxes = np.zeros((0, 4), dtype=np.int64)
    for _ in range(steps):
        chosen = rng.choice(len(images), size=4, replace=False)
        batch = collate_global_local([
            global_local_sample(images[i][0], no_boxes, images[i][1], model.config.global_size, with_patches=False)
            for i in chosen
        ])
        trainer.step(stage, batch, optimizer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs=2, type=int, default=(4499, 6748), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--fpn-channels", type=int, default=128)
    parser.add_argument("--sharing", default="g2l")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    import glmed
    from glmed.data.synthetic import make_dermoscopy_image

    torch.manual_seed(0)
    seed = lesion_seed(0.10)
    image, truth = make_dermoscopy_image(tuple(args.size), seed)
    c2f = glmed.CoarseToFineGLNet(2, args.backbone, args.sharing, fpn_channels=args.fpn_channels)
    started = time.perf_counter()
    train_global_branch(c2f, args.train_steps, (600, 900), seed)
    print(f"global branch trained for {args.train_steps} steps in {time.perf_counter() - started:.0f} s")
    plain = glmed.GLNet(2, args.backbone, args.sharing, fpn_channels=args.fpn_channels)
    plain.load_state_dict(c2f.state_dict())

    rows = []
    lesion = int(truth.sum())
    for name, model in (("coarse-to-fine GLNet", c2f), ("GLNet, whole image", plain)):
        started = time.perf_counter()
        result = glmed.predict(model, image, batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        refined = sum((b[2] - b[0]) * (b[3] - b[1]) for b in result.boxes) if result.boxes else truth.size
        rows.append({
            "model": name,
            "patches": result.patches,
            "refined area / lesion area": round(refined / lesion, 2),
            "seconds": round(seconds, 1),
        })
    print(f"image {args.size[0]}×{args.size[1]}, lesion {lesion / truth.size:.1%} of it, "
          f"{args.backbone}-FPN{args.fpn_channels} {args.sharing}, CPU")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
