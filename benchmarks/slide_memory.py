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

With ``--tissue-sides`` it measures glmed alone on square whole slides with tissue on part of
them (:func:`glmed.data.synthetic.slides.write_synthetic_slide`: an H&E-like generic pyramidal
TIFF, ~30% tissue in a few pieces on glass, written tile by tile so a 60k×60k slide is never in
memory), segmented with the tissue mask (patches of glass are skipped): peak memory against the
slide's area, and time against its tissue's area. The smallest slide is also segmented with
``tissue=False``, every patch, for the time skipping saves. MONAI is left out there: it would need
the whole slide as one array (10.8 GB at 60k×60k).

    python benchmarks/slide_memory.py --tissue-sides 10000 20000 30000 40000 50000 60000
    python benchmarks/slide_memory.py --quick     # 768² and 1536², a tiny network: well under a minute
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

QUICK = {"tissue_sides": [768, 1536], "fpn_channels": 16, "patch_size": 128, "overlap": 16, "global_size": 128}
"""``--quick``: two small tissue slides and a tiny network, for a smoke test."""

MPP = 0.5
"""µm per level-0 pixel of the generated tissue slides (a 20x scan): a 60k×60k slide is 30 mm square."""


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
            if name in ("RssAnon", "RssFile", "VmRSS"):
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


def make_tissue_slide(path: Path, side: int, tissue_fraction: float) -> float:
    """A generated H&E slide, ``side``×``side``, written tile by tile; returns its tissue fraction."""
    from glmed.data.synthetic.slides import write_synthetic_slide

    written = write_synthetic_slide(path, (side, side), seed=side, tissue_fraction=tissue_fraction, mpp=MPP,
                                    kind="tiff", tile=512)
    return written.tissue_fraction


def run_tissue_case(slide: Path, tissue: bool, args: argparse.Namespace) -> dict:
    """Segment a tissue slide with glmed, with or without the tissue mask; memory, time, patches (child process)."""
    import torch

    import glmed

    torch.manual_seed(0)
    sizes = {"patch_size": args.patch_size, "overlap": args.overlap} if args.patch_size else {}
    if args.global_size:
        sizes["global_size"] = args.global_size
    model = glmed.GLNet(2, args.backbone, "bidirectional", fpn_channels=args.fpn_channels, **sizes).eval()
    start = time.perf_counter()
    with MemorySampler() as memory, tempfile.TemporaryDirectory() as scratch:
        result = glmed.predict_to_tiff(model, slide, Path(scratch) / "mask.tif", batch_size=args.batch_size,
                                       tissue=tissue)
    found = result.tissue
    return {"tissue mask": "on" if tissue else "off",
            "tissue %": None if found is None else round(100 * found.fraction, 1),
            "patches": result.patches, "glass patches": result.patches_glass,
            "peak RssAnon MB": round(memory.peak["RssAnon"]), "peak VmRSS MB": round(memory.peak["VmRSS"]),
            "peak RssFile MB": round(memory.peak["RssFile"]), "anon added MB": memory.added("RssAnon"),
            "seconds": round(time.perf_counter() - start, 1)}


def tissue_table(args: argparse.Namespace) -> int:
    """Generate each square slide, segment it in a child process, print the table and the scaling checks."""
    import pandas as pd

    rows = []
    smallest = min(args.tissue_sides)
    with tempfile.TemporaryDirectory() as folder:
        for side in args.tissue_sides:
            slide = Path(folder) / f"tissue_{side}.tif"
            began = time.perf_counter()
            fraction = make_tissue_slide(slide, side, args.tissue_fraction)
            written_in = round(time.perf_counter() - began, 1)
            for tissue in (True, False) if side == smallest and not args.no_baseline else (True,):
                command = [sys.executable, __file__, "--child-tissue", str(slide), str(int(tissue)),
                           "--backbone", args.backbone, "--fpn-channels", str(args.fpn_channels),
                           "--batch-size", str(args.batch_size), "--patch-size", str(args.patch_size),
                           "--overlap", str(args.overlap), "--global-size", str(args.global_size)]
                done = subprocess.run(command, capture_output=True, text=True)
                row = {"slide": f"{side}²", "megapixels": round(side * side / 1e6, 1),
                       "tissue megapixels": round(side * side * fraction / 1e6, 1), "written in s": written_in}
                if done.returncode != 0:
                    row["error"] = (done.stderr.strip().splitlines() or ["failed"])[-1]
                else:
                    row.update(json.loads(done.stdout.strip().splitlines()[-1]))
                    row["s per tissue MP"] = round(row["seconds"] / max(row["tissue megapixels"], 1e-9), 2)
                rows.append(row)
                print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
            slide.unlink()
    table = pd.DataFrame(rows)
    print(f"\nglmed.predict_to_tiff on square slides, ~{100 * args.tissue_fraction:.0f}% tissue, "
          f"{args.backbone}-FPN{args.fpn_channels} bidirectional, batch {args.batch_size}, CPU, "
          f"{torch_threads()} threads")
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, however this file is loaded
    from _common import markdown

    print(markdown(table.astype(object).where(table.notna(), "")))
    masked = table[table["tissue mask"] == "on"] if "tissue mask" in table else table.iloc[:0]
    if len(masked) >= 2 and "error" not in masked:
        first, last = masked.iloc[0], masked.iloc[-1]
        print()
        for field in ("peak RssAnon MB", "peak VmRSS MB"):
            growth = 100 * (last[field] / first[field] - 1)
            print(f"{field.removesuffix(' MB')} {first[field]} MB at {first['slide']} -> {last[field]} MB at "
                  f"{last['slide']}: {growth:+.0f}% for {last['megapixels'] / first['megapixels']:.0f}x the area "
                  f"(highest of any slide: {masked[field].max()} MB)")
        print(f"time {first['seconds']} s -> {last['seconds']} s: x{last['seconds'] / max(first['seconds'], 1e-9):.1f}"
              f" for x{last['tissue megapixels'] / max(first['tissue megapixels'], 1e-9):.1f} the tissue and "
              f"x{last['megapixels'] / first['megapixels']:.1f} the slide")
    return 0


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--heights", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--fpn-channels", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--tissue-sides", type=int, nargs="+", default=None, metavar="SIDE",
                        help="measure square tissue slides of these sides instead (glmed alone, tissue mask on)")
    parser.add_argument("--tissue-fraction", type=float, default=0.3, help="tissue share of the generated slides")
    parser.add_argument("--patch-size", type=int, default=0, help="the network's patch side (0: the paper's 508)")
    parser.add_argument("--overlap", type=int, default=50, help="with --patch-size, the patches' overlap")
    parser.add_argument("--global-size", type=int, default=0, help="the global view's side (0: the paper's 508)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the tissue=False run of the smallest slide")
    parser.add_argument("--quick", action="store_true", help="tissue slides of 768² and 1536², a tiny network")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SLIDE"), help=argparse.SUPPRESS)
    parser.add_argument("--child-tissue", nargs=2, metavar=("SLIDE", "TISSUE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if args.child_tissue:
        slide, tissue = args.child_tissue
        print(json.dumps(run_tissue_case(Path(slide), tissue == "1", args)))
        return 0
    if args.tissue_sides:
        return tissue_table(args)
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
