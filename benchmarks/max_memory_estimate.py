"""``max_memory``'s estimate beside the peak memory of real predictions, each in a fresh process.

For every backbone and batch size, a child process builds the model (paper sizes: 508-pixel
global image and patches, 50-pixel overlap; untrained weights, which do not change the memory),
makes a random image, runs ``glmed.predict`` at that batch size and records the peak memory the
prediction added; only then does it ask :meth:`glmed.GlobalLocalInferer.fitted` for the plan a
budget would give (the measurement's own passes come after the peak was read) and prints the
estimate at that batch beside it.

Measured peaks, both on the CPU: ``ru_maxrss`` growth (the process's peak resident size minus
its peak once the model and image were built, as ``benchmarks/predict_memory.py`` measures), and
``VmHWM`` growth (the peak reset through ``/proc/self/clear_refs`` just before the prediction,
minus the resident size then; Linux).

    python benchmarks/max_memory_estimate.py                       # resnet18 and resnet50, batch 1 and 4
    python benchmarks/max_memory_estimate.py --backbones resnet50 --batches 2 --sharing g2l
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _kb(field: str) -> int:
    return int(Path("/proc/self/status").read_text().split(f"{field}:")[1].split()[0])


def run_case(backbone: str, sharing: str, batch: int, height: int, width: int, model_kind: str) -> dict[str, object]:
    """Predict once at ``batch`` and report the measured peaks and the estimate (in a child process)."""
    import numpy as np
    import torch

    import glmed

    torch.manual_seed(0)
    model_class = glmed.CoarseToFineGLNet if model_kind == "c2f" else glmed.GLNet
    model = model_class(2, backbone, sharing).eval()
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path("/proc/self/clear_refs").write_text("5")
    base_rss = _kb("VmRSS")
    start = time.perf_counter()
    result = glmed.predict(model, image, batch_size=batch)
    seconds = time.perf_counter() - start
    hwm_mb = (_kb("VmHWM") - base_rss) / 1024
    maxrss_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_maxrss) / 1024
    inferer = glmed.GlobalLocalInferer(batch_size=batch, max_memory=2**50)  # a budget that caps nothing
    _, plan = inferer.fitted(model, (height, width))
    assert plan is not None
    phase = plan.peak_phase(batch)
    return {
        "network": f"{backbone} {sharing}" + (" c2f" if model_kind == "c2f" else ""),
        "batch": batch,
        "patches": result.patches,
        "estimate_mb": round(plan.estimate(batch) / 2**20),
        "fixed_mb": round(phase.fixed / 2**20),
        "per_patch_mb": round(phase.per_patch / 2**20),
        "peak_phase": phase.name,
        "ru_maxrss_growth_mb": round(maxrss_mb),
        "vmhwm_growth_mb": round(hwm_mb),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs=2, type=int, default=(1000, 1400), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--sharing", default="bidirectional")
    parser.add_argument("--model", choices=["glnet", "c2f"], default="glnet")
    parser.add_argument("--child", nargs=2, metavar=("BACKBONE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    height, width = args.size
    if args.child:
        backbone, batch = args.child[0], int(args.child[1])
        print(json.dumps(run_case(backbone, args.sharing, batch, height, width, args.model)))
        return 0
    rows = []
    for backbone in args.backbones:
        for batch in args.batches:
            command = [sys.executable, __file__, "--child", backbone, str(batch), "--size", str(height), str(width),
                       "--sharing", args.sharing, "--model", args.model]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                rows.append({"network": backbone, "batch": batch,
                             "error": (done.stderr.strip().splitlines() or ["failed"])[-1]})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    import pandas as pd

    print(f"image {height}×{width}, CPU, each case in a fresh process; MB = 2**20 bytes")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
