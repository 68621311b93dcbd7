"""Benchmark: glmed's ISIC 2018 Task 1 scorer beside the official ``isic-challenge-scoring``.

Generates a deterministic test-set-sized submission (259 truth/prediction PNG pairs at ISIC 2018
image sizes, 1022x767 to 6748x4499), scores it with each tool in a fresh child process (so peak
memory is each tool's own), prints time, peak resident memory and the mean thresholded Jaccard,
and fails unless the six aggregate metrics are bit-for-bit identical.

    python benchmarks/bench_isic_scoring.py [--dir DIR] [--images 259] [--repeat 2]

Needs the test extra (``pip install -e .[test]``) for the official scorer.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: (height, width) of ISIC 2018 Task 1 images and roughly how common each is.
ISIC_SIZES = {
    (767, 1022): 0.45, (768, 1024): 0.10, (1129, 1504): 0.05, (2000, 3008): 0.10,
    (2848, 4288): 0.10, (3000, 4000): 0.05, (4439, 6688): 0.10, (4499, 6748): 0.05,
}
SEED = 2018


def _blob(rng: np.random.Generator, shape: tuple[int, int], centre, radii) -> Image.Image:
    """A 0/255 lesion-like mask: a wobbly ellipse drawn by Pillow."""
    angles = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    radius = 1 + sum(rng.uniform(0, 0.08) * np.cos(k * angles + rng.uniform(0, 6.3)) for k in range(2, 6))
    image = Image.new("L", shape[::-1], 0)
    points = zip(
        centre[1] + radii[1] * radius * np.cos(angles), centre[0] + radii[0] * radius * np.sin(angles), strict=True
    )
    ImageDraw.Draw(image).polygon(list(points), fill=255)
    return image


def _write_pair(root: Path, index: int) -> None:
    rng = np.random.default_rng([SEED, index])
    sizes = list(ISIC_SIZES)
    weights = np.array(list(ISIC_SIZES.values()))
    height, width = sizes[rng.choice(len(sizes), p=weights / weights.sum())]
    centre = np.array([height, width]) * rng.uniform(0.4, 0.6, 2)
    radii = np.array([height, width]) * rng.uniform(0.15, 0.35, 2)
    name = f"ISIC_{index:07d}_segmentation.png"
    _blob(rng, (height, width), centre, radii).save(root / "truth" / name)
    moved = centre + np.array([height, width]) * rng.normal(0, 0.04, 2)
    _blob(rng, (height, width), moved, radii * rng.uniform(0.7, 1.2)).save(root / "prediction" / name)


def generate(root: Path, images: int) -> None:
    """Write ``images`` deterministic pairs under ``root/truth`` and ``root/prediction``."""
    for sub in ("truth", "prediction"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(lambda i: _write_pair(root, i), range(images)))


def _score_official(root: Path, workers: int | None) -> dict[str, float]:
    from isic_challenge_scoring import SegmentationScore

    score = SegmentationScore.from_dir(root / "truth", root / "prediction")
    return {k: float(v) for k, v in score.macro_average.items()}


def _score_glmed(root: Path, workers: int | None) -> dict[str, float]:
    from glmed.metrics.isic import score_submission

    table = score_submission(root / "truth", root / "prediction", workers=workers)
    return {k: v for k, v in table.attrs["summary"].items() if k != "images"}


def measure(tool: str, root: Path, workers: int | None) -> dict:
    """Score ``root`` with one tool in this process; wall and CPU time of the scoring call only."""
    module, score = {"official": ("isic_challenge_scoring", _score_official),
                     "glmed": ("glmed.metrics.isic", _score_glmed)}[tool]
    importlib.import_module(module)  # import time is not scoring time

    start, cpu_start = time.perf_counter(), os.times()
    summary = score(root, workers)
    seconds, cpu_end = time.perf_counter() - start, os.times()
    cpu = cpu_end.user + cpu_end.system - cpu_start.user - cpu_start.system
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak_mb, "summary": summary}


def _run_child(tool: str, root: Path, workers: int | None) -> dict:
    command = [sys.executable, __file__, "--measure", tool, "--dir", str(root)]
    if workers:
        command += ["--workers", str(workers)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write (or reuse) the masks; default: a temp folder")
    parser.add_argument("--images", type=int, default=259, help="number of image pairs (ISIC test set: 259)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the tools this many times; best time kept")
    parser.add_argument("--measure", choices=["official", "glmed"], help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:
        print(json.dumps(measure(args.measure, args.dir, args.workers)))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        root = args.dir or Path(scratch)
        existing = len(list((root / "truth").glob("*.png")))
        if existing not in (0, args.images):
            parser.error(f"{root} holds {existing} pairs, not --images {args.images}; name an empty folder")
        if existing == 0:
            start = time.perf_counter()
            generate(root, args.images)
            print(f"generated {args.images} pairs in {time.perf_counter() - start:.1f} s under {root}")
        return _report(root, args.images, args.repeat)


def _report(root: Path, images: int, repeat: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    runs = {"isic-challenge-scoring 5.6.0": ("official", None), "glmed, 1 thread": ("glmed", 1),
            f"glmed, {cpus} threads": ("glmed", cpus)}
    best: dict[str, dict] = {}
    for _ in range(repeat):
        for label, (tool, workers) in runs.items():
            result = _run_child(tool, root, workers)
            if label not in best or result["seconds"] < best[label]["seconds"]:
                best[label] = result
    pixels = 0
    for path in (root / "truth").glob("*.png"):
        with Image.open(path) as image:
            pixels += image.size[0] * image.size[1]
    print(f"{images} pairs, {pixels / 1e6:.0f} Mpixel per side, {cpus} CPUs, best of {repeat}")
    print(f"{'tool':<30}{'seconds':>9}{'CPU s':>8}{'peak RSS MB':>13}  mean thresholded Jaccard")
    for label, result in best.items():
        print(f"{label:<30}{result['seconds']:>9.2f}{result['cpu_seconds']:>8.2f}{result['peak_rss_mb']:>13.0f}  "
              f"{result['summary']['threshold_jaccard']!r}")
    official = best["isic-challenge-scoring 5.6.0"]
    glmed = best[f"glmed, {cpus} threads"]
    identical = all(r["summary"] == official["summary"] for r in best.values())
    print(f"speed-up: {official['seconds'] / glmed['seconds']:.1f}x "
          f"(1 thread: {official['seconds'] / best['glmed, 1 thread']['seconds']:.1f}x); "
          f"six aggregate metrics bit-for-bit identical: {'yes' if identical else 'NO'}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
