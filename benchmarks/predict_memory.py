"""Peak host memory and time of glmed.predict on an ISIC-sized image, beside two baselines.

The baselines run the same backbone's local branch alone (the ResNet-FPN and its head,
``local_only``): MONAI's ``sliding_window_inference`` with glmed's patch size, overlap and
batch size, and one forward pass over the whole full-resolution image at once.

Each case runs in its own process, so one case's peak cannot hide another's; the peak is
the process's maximum resident set size (``ru_maxrss``) minus what it held once the model
was built, i.e. what inference itself added. On a GPU the same figures would come from
``torch.cuda.max_memory_allocated``; this script measures the CPU path.

    python benchmarks/predict_memory.py                    # 6748×4499, ResNet50, bidirectional
    python benchmarks/predict_memory.py --size 2000 1500 --backbone resnet18
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_case(case: str, height: int, width: int, backbone: str, sharing: str, batch_size: int) -> dict[str, object]:
    """Build the model, run one case, and report its memory and time (runs in a child process)."""
    import numpy as np
    import torch

    import glmed
    from glmed.data.normalize import to_model_input

    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    model = glmed.GLNet(2, backbone, sharing if case == "glmed.predict" else "local_only").eval()
    baseline = _peak_rss_mb()
    start = time.perf_counter()
    if case == "glmed.predict":
        result = glmed.predict(model, image, batch_size=batch_size)
        mask, patches = result.mask, result.patches
    elif case == "MONAI sliding window":
        from monai.inferers import sliding_window_inference

        tiles_seen = []

        def local_branch(tiles: torch.Tensor) -> torch.Tensor:
            tiles_seen.append(len(tiles))
            return model.local_logits(model.local_features(tiles), tiles.shape[-2:])

        config = model.config
        with torch.inference_mode():
            logits = sliding_window_inference(
                to_model_input(image)[None], roi_size=(config.patch_size,) * 2, sw_batch_size=batch_size,
                predictor=local_branch, overlap=config.overlap / config.patch_size, mode="constant")
            mask, patches = logits[0].argmax(0).numpy().astype(np.uint8), sum(tiles_seen)
    else:
        with torch.inference_mode():
            x = to_model_input(image)[None]
            logits = model.local_logits(model.local_features(x), (height, width))
            mask, patches = logits[0].argmax(0).numpy().astype(np.uint8), 1
    seconds = time.perf_counter() - start
    return {
        "case": case,
        "network": f"{backbone}-FPN " + (sharing if case == "glmed.predict" else "one branch"),
        "patches": patches,
        "peak_mb": round(_peak_rss_mb(), 1),
        "added_mb": round(_peak_rss_mb() - baseline, 1),
        "seconds": round(seconds, 1),
        "mask_shape": list(mask.shape),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs=2, type=int, default=(4499, 6748), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--sharing", default="bidirectional")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=["glmed.predict", "MONAI sliding window", "full image at once"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    height, width = args.size
    if args.child:
        print(json.dumps(run_case(args.child, height, width, args.backbone, args.sharing, args.batch_size)))
        return 0
    rows = []
    for case in args.cases:
        command = [sys.executable, __file__, "--child", case, "--size", str(height), str(width),
                   "--backbone", args.backbone, "--sharing", args.sharing, "--batch-size", str(args.batch_size)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append({"case": case, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]})
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    import pandas as pd

    print(f"image {height}×{width}, CPU, peak resident memory per process (ru_maxrss)")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
