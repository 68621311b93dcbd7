"""Coarse-to-fine GLNet against the global-only and local-only baselines, the shape of the paper's Table 4.

The models are trained on the CPU and scored on generated dermoscopy-like images.

Every model has the same small backbone, sizes and optimiser, is trained through its own
paper schedule for the same number of epochs per stage, and is scored on the same held-out
images with the ISIC 2018 Task 1 metrics. The numbers are whatever this run gives; the
paper's (ResNet50, real ISIC, far longer training) were local 48.5, global 70.1, G→L 72.7,
G⇄L 73.9, G⇄L with the box 75.2.

    python benchmarks/c2f_accuracy.py                 # about 10 minutes on 2 CPU cores
    python benchmarks/c2f_accuracy.py --epochs 4 --train 6 --test 3 --size 192 256   # a minute
"""

from __future__ import annotations

import argparse
import sys
import time


def compare(size, train_count: int, test_count: int, epochs: int, seed: int = 0, log=print):
    """Train and score each model; returns a table with one row per model."""
    import pandas as pd
    import torch

    from glmed.data.synthetic import make_dermoscopy_image
    from glmed.models.coarse_to_fine import CoarseToFineGLNet
    from glmed.models.glnet import GLNet
    from glmed.training.evaluate import evaluate
    from glmed.training.fit import fit
    from glmed.training.stages import paper_stages
    from glmed.training.trainer import GLNetTrainer

    train = [make_dermoscopy_image(size, seed + i) for i in range(train_count)]
    test = [make_dermoscopy_image(size, seed + 10_000 + i) for i in range(test_count)]
    sizes = dict(fpn_channels=32, global_size=64, patch_size=64, overlap=8)
    models = [
        ("local only", GLNet, "local_only"),
        ("global only", GLNet, "global_only"),
        ("GLNet G→L", GLNet, "g2l"),
        ("coarse-to-fine G→L", CoarseToFineGLNet, "g2l"),
        ("coarse-to-fine G⇄L", CoarseToFineGLNet, "bidirectional"),
    ]
    rows = []
    for name, kind, sharing in models:
        torch.manual_seed(seed)
        model = kind(2, "resnet18", sharing, **sizes)
        started = time.perf_counter()
        fit(model, train, stages=paper_stages(sharing, epochs=(epochs, epochs, max(1, epochs // 3))),
            trainer=GLNetTrainer(model, global_lr=1e-3, local_lr=1e-3), seed=seed, progress=False, log=None)
        trained = time.perf_counter() - started
        scores = evaluate(model, test)
        rows.append({
            "model": name,
            "threshold_jaccard": round(scores.threshold_jaccard.mean(), 3),
            "jaccard": round(scores.jaccard.mean(), 3),
            "dice": round(scores.dice.mean(), 3),
            "patches per image": round(scores.patches.mean(), 1),
            "train s": round(trained, 0),
        })
        log(f"{name}: {rows[-1]}")
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs=2, type=int, default=(384, 512), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--train", type=int, default=16, help="training images")
    parser.add_argument("--test", type=int, default=8, help="held-out images")
    parser.add_argument("--epochs", type=int, default=15, help="epochs of the global and local stages")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    table = compare(tuple(args.size), args.train, args.test, args.epochs, args.seed)
    print(f"\n{args.train} training / {args.test} held-out generated images of {args.size[0]}×{args.size[1]}, "
          f"ResNet18-FPN32, global 64, patches 64, {args.epochs} epochs per stage, CPU")
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
