"""Host memory against slide size: glmed.predict_to_tiff beside MONAI's sliding-window inference.

Generates tiled pyramidal TIFF "slides" of one width and growing heights, then segments each in
a fresh child process with the same backbone: glmed streams it (regions in, a band of rows of
outputs, a pyramidal TIFF mask out); MONAI's ``sliding_window_inference`` needs the whole slide
as one tensor and keeps full-size output and weight canvases, here over the local branch alone.
Memory is sampled every 20 ms from ``/proc/self/status``: peak anonymous memory (what the
process itself allocated) and peak resident memory (which also counts file pages the OS caches,
e.g. glmed's memory-mapped scratch mask), each minus what the process held before inference.

    python benchmarks/slide_memory.py                              # width 2048, heights 4k..32k
    python benchmarks/slide_memory.py --heights 4096 8192 --backbone resnet18
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CASES = ("glmed.predict_to_tiff", "MONAI sliding window")


class MemorySampler:
    """Peak RssAnon and VmRSS (MB) of this process, sampled on a thread while the block runs."""

    def __enter__(self) -> MemorySampler:
        self.baseline = self._read()
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._update()

    def added(self, field: str) -> float:
        """MB of ``field`` the block added at its peak over what the process held when it began."""
        return round(self.peak[field] - self.baseline[field], 1)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._update()

    def _update(self) -> None:
        for field, value in self._read().items():
            self.peak[field] = max(self.peak[field], value)

    @staticmethod
    def _read() -> dict[str, float]:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "VmRSS"):
                fields[name] = int(value.split()[0]) / 1024
        return fields


def make_slide(path: Path, height: int, width: int) -> None:
    """A generated dermoscopy-like image written as a JPEG-tiled pyramidal TIFF."""
    from glmed.data.synthetic import make_dermoscopy_image
    from glmed.io.writers import write_pyramidal_tiff

    image, _ = make_dermoscopy_image((height, width), seed=height)
    write_pyramidal_tiff(path, image, tile=512, compression="jpeg")


def run_case(case: str, slide: Path, backbone: str, fpn_channels: int, batch_size: int) -> dict:
    """Segment ``slide`` one way and report memory and time (runs in a child process)."""
    import torch

    import glmed
    from glmed.data.normalize import to_model_input

    torch.manual_seed(0)
    sharing = "bidirectional" if case == "glmed.predict_to_tiff" else "local_only"
    model = glmed.GLNet(2, backbone, sharing, fpn_channels=fpn_channels).eval()
    start = time.perf_counter()
    with MemorySampler() as memory:
        if case == "glmed.predict_to_tiff":
            with tempfile.TemporaryDirectory() as scratch:
                glmed.predict_to_tiff(model, slide, Path(scratch) / "mask.tif", batch_size=batch_size)
        else:
            from monai.inferers import sliding_window_inference

            config = model.config
            with glmed.open_image(slide) as reader, torch.inference_mode():
                whole = to_model_input(reader.read((0, 0, *reader.size)))[None]
                logits = sliding_window_inference(
                    whole, roi_size=(config.patch_size,) * 2, sw_batch_size=batch_size,
                    overlap=config.overlap / config.patch_size,
                    predictor=lambda tiles: model.local_logits(model.local_features(tiles), tiles.shape[-2:]))
                logits[0].argmax(0).numpy()
    return {"case": case, "network": f"{backbone}-FPN{fpn_channels} {sharing}",
            "anon_added_mb": memory.added("RssAnon"), "rss_added_mb": memory.added("VmRSS"),
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--heights", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--fpn-channels", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SLIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case, slide = args.child
        print(json.dumps(run_case(case, Path(slide), args.backbone, args.fpn_channels, args.batch_size)))
        return 0
    import pandas as pd

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for height in args.heights:
            slide = Path(folder) / f"slide_{height}x{args.width}.tif"
            make_slide(slide, height, args.width)
            for case in args.cases:
                command = [sys.executable, __file__, "--child", case, str(slide), "--backbone", args.backbone,
                           "--fpn-channels", str(args.fpn_channels), "--batch-size", str(args.batch_size)]
                done = subprocess.run(command, capture_output=True, text=True)
                row = {"slide": f"{height}×{args.width}", "megapixels": round(height * args.width / 1e6, 1)}
                if done.returncode != 0:
                    rows.append({**row, "case": case, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]})
                else:
                    rows.append({**row, **json.loads(done.stdout.strip().splitlines()[-1])})
                print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    print(f"\nhost memory added by inference (MB), width {args.width}, CPU")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
