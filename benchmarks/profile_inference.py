"""Where ``glmed.predict``'s time goes: a profile of whole-image GLNet and coarse-to-fine inference.

Builds a ResNet50 GLNet with the paper's sizes (508-pixel global image and patches, 50-pixel
overlap; untrained weights, which do not change the cost) and its coarse-to-fine twin, generates
a dermoscopy-like image (:func:`glmed.data.synthetic.make_dermoscopy_image`) and runs
:func:`glmed.predict` on it, printing a table of the time spent in each part of the inference:
the global passes, bidirectional sharing's collect pass, the local passes, the global→local crops
(``crop_to_patches``), the local→global canvas, reading and normalising patches, the heads,
softmax and copy to the host, stitching (:mod:`glmed.inference.merging`), and the peak memory
inference added.

With ``--save-mask`` the averaged foreground probability of every pixel is saved beside the
mask, and ``--compare`` also compares two runs at the first one's median probability: untrained
heads put almost every pixel on one side of 0.5, where any two settings agree trivially; at the
median, half the pixels sit near the boundary, where float32 and bf16 or channels-last differ
most (:class:`ForegroundProbabilities`).

The coarse-to-fine model's coarse mask comes from the generated truth (the global branch still
runs and its head's output is computed, then replaced), so its box is the one a trained global
branch would find and the refined patch count is realistic; an untrained global branch would
find an arbitrary box.

How the time is split: every part listed above is wrapped in a timer (and, with
``--profiler torch``, in a ``torch.profiler.record_function`` of the same name), nested, so a
part's *self* time excludes the parts it calls: the collect pass's self time is its loop alone,
its local passes and crops are listed under it. ``--profiler torch`` adds the operator table of
``torch.profiler`` (CPU activities, shapes not recorded), ``--profiler cprofile`` the Python
functions by their own time.

Memory: the peak resident set size (``VmHWM``) during inference, reset before it
(``/proc/self/clear_refs``), minus the resident size just before; i.e. what inference added.

    python benchmarks/profile_inference.py                           # 2048×1536, both models
    python benchmarks/profile_inference.py --size 4499 6748 --model glnet
    python benchmarks/profile_inference.py --amp bf16 --save-mask /tmp/bf16.npy
    python benchmarks/profile_inference.py --compare /tmp/off.npy /tmp/bf16.npy
    python benchmarks/profile_inference.py --matrix                  # each lever in a fresh process
    python benchmarks/profile_inference.py --collect-pass-ab 5       # collect pass: all maps vs shared ones
    python benchmarks/profile_inference.py --fold-ab 5               # local pass: batch norm folded or not

Timings on a shared machine are noisy: compare fractions, and repeat a run that looks disturbed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

# (label, module, attribute path): the parts of the inference the table splits the time into. The
# module is where the caller looks the name up, so the wrapper is what the inferer really calls.
PARTS: tuple[tuple[str, str, str], ...] = (
    ("global input (resize, normalise)", "glmed.inference.inferer", "GlobalLocalInferer._global_input"),
    ("global branch", "glmed.models.glnet", "GLNet.global_features"),
    ("global head", "glmed.models.glnet", "GLNet.global_logits"),
    ("collect pass (bidirectional)", "glmed.inference.inferer", "collect_local_context"),
    ("local branch", "glmed.models.glnet", "GLNet.local_features"),
    ("G→L crop (crop_to_patches)", "glmed.models.glnet", "crop_to_patches"),
    ("G→L crop convolutions (convolve_crops)", "glmed.models.glnet", "convolve_crops"),
    ("L→G canvas add", "glmed.models.sharing", "LocalToGlobalCanvas.add"),
    ("L→G canvas maps", "glmed.models.sharing", "LocalToGlobalCanvas.maps"),
    ("aggregation head", "glmed.models.glnet", "GLNet.aggregated_logits_at_boxes"),
    ("local head", "glmed.models.glnet", "GLNet.local_logits"),
    ("stitch loop (softmax, to host)", "glmed.inference.inferer", "GlobalLocalInferer._stitch_patches"),
    ("merging: add patch", "glmed.inference.merging", "RowBandMerger.add"),
    ("merging: arg-max of finished cells", "glmed.inference.merging", "RowBandMerger._write"),
    ("reading patches", "glmed.data.samples", "read_patches"),
    ("normalising (to_model_input)", "glmed.inference.inferer", "to_model_input"),
    ("coarse mask upsampled (upsample_to_labels)", "glmed.inference.inferer", "upsample_to_labels"),
    ("coarse-to-fine boxes", "glmed.inference.inferer", "coarse_to_fine_boxes"),
    ("notes", "glmed.inference.inferer", "cover_notes"),
    ("notes", "glmed.inference.inferer", "box_edge_notes"),
    ("thumbnail", "glmed.inference.inferer", "thumbnail_size"),
)


class Timers:
    """Nested wall-clock timers: inclusive and self time per path of labels, per thread."""

    def __init__(self) -> None:
        self.inclusive: dict[tuple[str, ...], float] = defaultdict(float)
        self.children: dict[tuple[str, ...], float] = defaultdict(float)
        self.calls: dict[tuple[str, ...], int] = defaultdict(int)
        self._local = threading.local()
        self.annotate = False
        self.main_stack: list[str] = []

    def _stack(self) -> list[str]:
        if not hasattr(self._local, "stack"):
            main = threading.current_thread() is threading.main_thread()
            self._local.stack = [] if main else ["(background thread)"]
            if main:
                self.main_stack = self._local.stack
        return self._local.stack

    @contextmanager
    def part(self, label: str) -> Iterator[None]:
        """Time the enclosed code as ``label``, nested under the parts around it on this thread."""
        stack = self._stack()
        stack.append(label)
        path = tuple(stack)
        start = time.perf_counter()
        try:
            if self.annotate:
                import torch

                with torch.profiler.record_function(label):
                    yield
            else:
                yield
        finally:
            elapsed = time.perf_counter() - start
            stack.pop()
            self.inclusive[path] += elapsed
            self.calls[path] += 1
            if len(path) > 1:
                self.children[path[:-1]] += elapsed

    def wrap(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` timed as ``label`` (generators are timed while they run, not while suspended)."""
        if inspect.isgeneratorfunction(function):
            def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
                inner = function(*args, **kwargs)
                while True:
                    with self.part(label):
                        try:
                            item = next(inner)
                        except StopIteration:
                            return
                    yield item
            return generator

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.part(label):
                return function(*args, **kwargs)
        return timed

    def table(self, total: float) -> str:
        """Rows of the tree: self and inclusive seconds, share of ``total``, calls."""
        lines = [f"{'part':<62} {'self s':>8} {'self %':>7} {'incl. s':>8} {'calls':>6}"]
        background = False
        for path in sorted(self.inclusive, key=lambda p: (p[0] != "predict", p)):
            if path[0] == "(background thread)" and not background:
                background = True
                lines.append("(background thread: read-ahead, overlapping the main thread's work)")
            inclusive = self.inclusive[path]
            own = inclusive - self.children.get(path, 0.0)
            name = "  " * (len(path) - 1) + path[-1]
            lines.append(f"{name:<62} {own:8.2f} {100 * own / total:6.1f}% {inclusive:8.2f} {self.calls[path]:6d}")
        return "\n".join(lines)

    def by_label(self) -> dict[str, float]:
        """Self seconds per label, summed over every place the label occurs."""
        sums: dict[str, float] = defaultdict(float)
        for path, inclusive in self.inclusive.items():
            sums[path[-1]] += inclusive - self.children.get(path, 0.0)
        return dict(sums)


def instrument(timers: Timers) -> None:
    """Replace each part of :data:`PARTS` by its timed version (in this process only)."""
    import importlib

    for label, module_name, attribute in PARTS:
        owner: Any = importlib.import_module(module_name)
        *outer, name = attribute.split(".")
        for part in outer:
            owner = getattr(owner, part)
        if not hasattr(owner, name):
            continue  # a part the code under test no longer has
        original = inspect.getattr_static(owner, name)
        if isinstance(original, staticmethod):
            setattr(owner, name, staticmethod(timers.wrap(label, original.__func__)))
        else:
            setattr(owner, name, timers.wrap(label, getattr(owner, name) if not outer else original))


class MemoryTrace:
    """Samples the resident set size every few milliseconds with the main thread's innermost part.

    Says which part of the inference the peak falls in: for each part, the largest growth over
    ``baseline_kb`` seen while it ran (innermost part only).
    """

    def __init__(self, timers: Timers, baseline_kb: int, interval: float = 0.005) -> None:
        self.timers, self.baseline_kb, self.interval = timers, baseline_kb, interval
        self.peaks: dict[tuple[str, ...], int] = defaultdict(int)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryTrace:
        self.timers._stack()  # the main thread's stack exists before sampling starts
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            path = tuple(self.timers.main_stack)
            grown = _memory_kb("VmRSS") - self.baseline_kb
            self.peaks[path] = max(self.peaks[path], grown)

    def table(self, rows: int = 10) -> str:
        """The parts with the largest resident growth, largest first."""
        lines = [f"{'part (innermost, as sampled)':<90} {'peak MB added':>14}"]
        for path, grown in sorted(self.peaks.items(), key=lambda item: -item[1])[:rows]:
            lines.append(f"{' > '.join(path) or '(between parts)':<90} {grown / 1024:14.0f}")
        return "\n".join(lines)


def _memory_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident size
        return True
    except OSError:
        return False


def build(kind: str, backbone: str, sharing: str, seed: int) -> Any:
    """A GLNet or CoarseToFineGLNet with the paper's sizes and seeded random weights, in eval mode."""
    import torch

    import glmed

    torch.manual_seed(seed)
    model_class = glmed.CoarseToFineGLNet if kind == "c2f" else glmed.GLNet
    return model_class(2, backbone, sharing, global_size=508, patch_size=508, overlap=50).eval()


def oracle_coarse(model: Any, truth: np.ndarray) -> None:
    """Make ``model``'s coarse mask the generated truth, so its box is the one a trained branch would find.

    The head still runs (its cost stays in the profile); its scores are then replaced by ±4 from
    the truth sampled at the head's output size.
    """
    import torch

    from glmed.data.samples import resize_label

    head = type(model).global_logits

    def global_logits(global_maps: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        logits = head(model, global_maps, size)
        sign = torch.from_numpy(resize_label(truth, tuple(logits.shape[-2:])).astype(np.float32) * 2 - 1)
        return torch.stack([-4 * sign, 4 * sign])[None].to(logits)

    model.global_logits = global_logits


class ForegroundProbabilities:
    """The averaged foreground probability of every pixel, as the stitching averages it (two classes).

    Hooks :meth:`glmed.inference.merging.RowBandMerger.add` and adds each patch's class-1
    probabilities onto a full-size float32 canvas in the same order, so the average is the one
    whose arg-max is the mask. Masks compared at the reference's median probability
    (:func:`compare`) then have about half their pixels near the decision boundary, where float32
    and bf16 or another memory layout are most likely to differ; untrained heads put almost every
    pixel on one side of 0.5, where any two settings agree trivially. The canvas is allocated (and
    touched) before the memory baseline is taken, so it is not counted as inference's memory.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.sums = np.zeros(size, np.float32)
        self.counts = np.zeros(size, np.float32)
        self.sums.fill(0)
        self.counts.fill(0)
        self._offsets: list[tuple[int, int]] = []

    def install(self) -> None:
        """Hook the merger: each merger's own ``out`` offset is found from its view of the mask."""
        from glmed.inference import merging

        add = merging.RowBandMerger.add
        canvas = self

        def recording(merger: Any, probabilities: Any, box: Any) -> None:
            r0, c0, r1, c1 = (int(v) for v in box)
            top, left = canvas._offset(merger.out)
            canvas.sums[top + r0 : top + r1, left + c0 : left + c1] += probabilities[1].float().numpy()
            canvas.counts[top + r0 : top + r1, left + c0 : left + c1] += 1
            add(merger, probabilities, box)

        merging.RowBandMerger.add = recording  # type: ignore[method-assign]

    def _offset(self, out: np.ndarray) -> tuple[int, int]:
        """Where a merger's ``out`` (a coarse-to-fine box's view of the mask, or the mask) starts."""
        base = out.base if out.base is not None else out
        if base is out:
            return (0, 0)
        offset = out.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        return divmod(offset // out.itemsize, base.shape[1])

    def averaged(self) -> np.ndarray:
        """Mean foreground probability per pixel; NaN where no patch was (outside coarse-to-fine boxes)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / self.counts, np.nan).astype(np.float32)


def predict_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options of :func:`glmed.predict` for this run; only those set, so older code runs too."""
    options: dict[str, Any] = {"batch_size": args.batch_size}
    if args.amp is not None:
        options["amp"] = args.amp
    if args.channels_last is not None:
        options["channels_last"] = args.channels_last
    return options


def profile_one(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """Build, generate, run one prediction under the chosen profiler; print and return its figures."""
    import torch

    import glmed
    from glmed.data.synthetic import make_dermoscopy_image

    height, width = args.size
    image, truth = make_dermoscopy_image((height, width), args.seed)
    model = build(kind, args.backbone, args.sharing, args.seed)
    foreground = ForegroundProbabilities((height, width)) if args.save_mask else None
    if foreground is not None:
        foreground.install()
    if kind == "c2f":
        oracle_coarse(model, truth)
    if args.no_prefetch:
        import glmed.inference.execution as execution

        execution.PREFETCH = False
    timers = Timers()
    if args.profiler in ("timers", "torch"):
        instrument(timers)
        timers.annotate = args.profiler == "torch"
    options = predict_options(args)
    gc.collect()
    resettable = _reset_peak()
    baseline_kb = _memory_kb("VmRSS")
    extra = ""
    trace = MemoryTrace(timers, baseline_kb) if args.memory_trace else contextlib.nullcontext()
    start = time.perf_counter()
    with trace, timers.part("predict"):
        if args.profiler == "torch":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as profiler:
                result = glmed.predict(model, image, **options)
            extra = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
        elif args.profiler == "cprofile":
            import cProfile
            import io
            import pstats

            cprofiler = cProfile.Profile()
            result = cprofiler.runcall(glmed.predict, model, image, **options)
            text = io.StringIO()
            pstats.Stats(cprofiler, stream=text).sort_stats("tottime").print_stats(args.rows)
            extra = text.getvalue()
        else:
            result = glmed.predict(model, image, **options)
    seconds = time.perf_counter() - start
    peak_kb = _memory_kb("VmHWM") if resettable else _memory_kb("VmRSS")
    if args.save_mask and foreground is not None:
        path = Path(args.save_mask)
        if args.model == "both":
            path = path.with_name(f"{path.stem}_{kind}{path.suffix}")
        np.save(path, result.mask)
        np.save(path.with_name(f"{path.stem}_probability.npy"), foreground.averaged())
    lesion = float((truth != 0).mean())
    jaccard = _jaccard(result.mask != 0, truth != 0)
    figures = {
        "model": kind, "size": [height, width], "sharing": args.sharing, "backbone": args.backbone,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(), "options": options,
        "prefetch": not args.no_prefetch, "patches": result.patches, "boxes": [list(b) for b in result.boxes],
        "seconds": round(seconds, 2), "added_mb": round((peak_kb - baseline_kb) / 1024, 1),
        "lesion_fraction": round(lesion, 4), "jaccard_vs_truth": round(jaccard, 4),
    }
    print(f"\n== {kind}: {width}×{height} image, {args.backbone} {args.sharing}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s), options {options}, prefetch {not args.no_prefetch}")
    print(f"   {result.patches} patches, boxes {result.boxes or 'whole image'}, lesion {100 * lesion:.1f}%")
    print(f"   {seconds:.1f} s, peak memory added by inference {figures['added_mb']:.0f} MB")
    if args.profiler in ("timers", "torch"):
        print(timers.table(seconds))
        figures["self_seconds"] = {k: round(v, 3) for k, v in timers.by_label().items()}
    if extra:
        print(extra)
    if isinstance(trace, MemoryTrace):
        print(trace.table())
    return figures


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def compare(first: str, second: str) -> dict[str, float]:
    """Two saved masks compared: pixel agreement (%) and Jaccard, as made and at the median.

    "As made": the masks themselves (foreground = any non-zero class). "At the median": both
    runs' foreground probabilities (saved beside the masks) thresholded at the first run's median
    over the pixels patches covered, so about half of them are foreground and the boundary runs
    through the bulk of the scores: the hardest place to agree (see :class:`ForegroundProbabilities`).
    """
    a, b = np.load(first), np.load(second)
    figures = {"agreement_percent": float(100 * (a == b).mean()), "jaccard": _jaccard(a != 0, b != 0),
               "foreground_a": float((a != 0).mean()), "foreground_b": float((b != 0).mean())}
    probabilities = [Path(name).with_name(f"{Path(name).stem}_probability.npy") for name in (first, second)]
    if all(path.exists() for path in probabilities):
        p, q = np.load(probabilities[0]), np.load(probabilities[1])
        covered = ~np.isnan(p)
        threshold = float(np.median(p[covered]))
        a_median, b_median = p[covered] > threshold, q[covered] > threshold
        figures.update({"median_threshold": threshold,
                        "median_agreement_percent": float(100 * (a_median == b_median).mean()),
                        "median_jaccard": _jaccard(a_median, b_median),
                        "largest_probability_difference": float(np.nanmax(np.abs(p - q)))})
    print(json.dumps(figures))
    return figures


# Each lever of the matrix: a name and the command-line options that switch it on. Plain bf16 is left
# out by default: on a CPU without native bfloat16 one ResNet50 pass takes minutes.
LEVERS: dict[str, list[str]] = {
    "float32": ["--amp", "off", "--no-channels-last"],
    "channels_last": ["--amp", "off", "--channels-last"],
    "bf16": ["--amp", "bf16", "--no-channels-last"],
    "bf16+channels_last": ["--amp", "bf16", "--channels-last"],
    "no_prefetch": ["--amp", "off", "--no-channels-last", "--no-prefetch"],
}


def matrix(args: argparse.Namespace) -> int:
    """Run each lever (and ``--before``'s code) for each model in a fresh process; print times and agreement.

    Cases alternate within each repeat, so a disturbance on a shared machine spreads over all of
    them; agreement is with the first lever's mask (float32 by default).
    """
    rows = []
    folder = Path(args.matrix_dir)
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[tuple[str, list[str], dict[str, str]]] = []
    if args.before:
        cases.append(("before (float32)", [], {"PYTHONPATH": args.before}))
    cases += [(name, LEVERS[name], {}) for name in args.levers.split(",")]
    for kind in (["glnet", "c2f"] if args.model == "both" else [args.model]):
        reference = str(folder / f"{kind}_{args.levers.split(',')[0]}_1.npy")
        runs = []
        for repeat in range(1, args.repeats + 1):
            for name, options, environment in cases:
                mask = folder / f"{kind}_{name.split(' ')[0]}_{repeat}.npy"
                command = [sys.executable, __file__, "--size", *map(str, args.size), "--model", kind,
                           "--sharing", args.sharing, "--backbone", args.backbone,
                           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--profiler", "none",
                           "--json", "--save-mask", str(mask), "--seed", str(args.seed), *options]
                output = subprocess.run(command, capture_output=True, text=True, check=True,
                                        env={**os.environ, **environment}).stdout
                figures = json.loads(output.strip().splitlines()[-1])
                runs.append((name, repeat, figures, str(mask)))
                print(kind, name, repeat, figures["seconds"], figures["added_mb"], flush=True)
        for name, repeat, figures, mask in runs:  # the reference exists once every case has run
            agreement = compare(reference, mask)
            rows.append((kind, name, repeat, figures["seconds"], figures["added_mb"], figures["patches"],
                         agreement["agreement_percent"], agreement["jaccard"],
                         agreement.get("median_agreement_percent", float("nan")),
                         agreement.get("median_jaccard", float("nan"))))
    print("\n| model | case | run | seconds | peak MB added | patches | agreement with the first case, % "
          "| Jaccard | agreement at the median, % | Jaccard at the median |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, name, repeat, seconds, added, patches, agreement_percent, jaccard, median_percent, median in rows:
        print(f"| {kind} | {name} | {repeat} | {seconds:.1f} | {added:.0f} | {patches} | {agreement_percent:.3f} "
              f"| {jaccard:.4f} | {median_percent:.3f} | {median:.4f} |")
    return 0


def one_batch(args: argparse.Namespace, sharing: str) -> tuple[Any, Any, Any, Any, Any]:
    """A seeded model and one batch of ``--batch-size`` patches side by side in a generated image.

    Returns ``(model, global_image 1×3×g×g, patches N×3×p×p, boxes N×4, image index N)``.
    """
    import torch

    from glmed.data.normalize import to_model_input
    from glmed.data.synthetic import make_dermoscopy_image
    from glmed.io.base import ArrayReader

    torch.set_num_threads(args.threads)
    model = build("glnet", args.backbone, sharing, args.seed)
    side = model.config.patch_size
    image, _ = make_dermoscopy_image((side, side * args.batch_size), args.seed)
    patches = to_model_input(image.reshape(side, args.batch_size, side, 3).transpose(1, 0, 2, 3))
    global_side = model.config.global_size
    global_image = to_model_input(ArrayReader(image).resized((global_side, global_side)))[None]
    width = 1.0 / args.batch_size
    boxes = torch.tensor([[0.0, i * width, 1.0, (i + 1) * width] for i in range(args.batch_size)])
    index = torch.zeros(args.batch_size, dtype=torch.long)
    return model, global_image, patches, boxes, index


def local_pass_ab(args: argparse.Namespace) -> int:
    """One batch's local pass in float32, default layout against channels-last, alternated in one process.

    The pass includes the global→local crops and the aggregation head (a g2l model); each layout
    runs ``--local-pass-ab`` times, alternating, so a disturbance on a shared machine spreads over
    both, and the median of each is printed.
    """
    import statistics

    import torch

    from glmed.inference.execution import restore_layouts, to_channels_last
    from glmed.models.fpn import FINAL

    model, global_image, patches, boxes, index = one_batch(args, args.sharing if args.sharing != "bidirectional"
                                                           else "g2l")
    side = model.config.patch_size
    times: dict[str, list[float]] = {"float32": [], "channels_last": []}
    with torch.inference_mode():
        global_maps = model.global_features(global_image)
        for _ in range(args.local_pass_ab):
            for name in times:
                layouts = to_channels_last(model) if name == "channels_last" else None
                x = patches.contiguous(memory_format=torch.channels_last) if layouts is not None else patches
                start = time.perf_counter()
                final = model.local_features(x, global_maps, boxes, index)[FINAL]
                model.aggregated_logits_at_boxes(final, global_maps, boxes, index, (side, side)).float().softmax(1)
                times[name].append(time.perf_counter() - start)
                if layouts is not None:
                    restore_layouts(layouts)
                print(name, round(times[name][-1], 2), flush=True)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.2f} s per batch of {args.batch_size} "
              f"(runs {', '.join(f'{v:.2f}' for v in values)})")
    ratio = statistics.median(times["channels_last"]) / statistics.median(times["float32"])
    print(f"channels_last / default layout: {ratio:.3f}")
    return 0


def alternate(variants: dict[str, Callable[[], Any]], repeats: int, batch_size: int) -> dict[str, Any]:
    """Run each variant ``repeats`` times, alternating, and print the medians and the second's ratio to the first.

    Alternating within one process spreads a disturbance on a shared machine over every variant.
    Both clocks are printed: the wall clock, and the process's CPU time, which other jobs on the
    cores inflate far less (with one torch thread it is the pass's own cost, cache and memory
    contention aside). Returns each variant's output of its last run.
    """
    import statistics

    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, Any] = {}
    for _ in range(repeats):
        for name, run in variants.items():
            outputs.pop(name, None)  # the last run's output is not alive during this one
            start, start_cpu = time.perf_counter(), time.process_time()
            outputs[name] = run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            print(name, f"wall {wall[name][-1]:.2f} s, cpu {cpu[name][-1]:.2f} s", flush=True)
    first, second = list(variants)[:2]
    for clock, times in (("wall", wall), ("cpu", cpu)):
        for name, values in times.items():
            print(f"{name}: median {clock} {statistics.median(values):.2f} s per batch of {batch_size} "
                  f"(runs {', '.join(f'{v:.2f}' for v in values)})")
        print(f"{clock}: {second} / {first}: {statistics.median(times[second]) / statistics.median(times[first]):.3f}")
    return outputs


def collect_pass_ab(args: argparse.Namespace) -> int:
    """One batch of bidirectional sharing's collect pass: every map (as before) against the shared maps only.

    Each pass is the local branch with its global→local crops plus the L→G canvas add, as
    :func:`glmed.models.sharing.collect_local_context` runs it per batch; "full" computes the whole
    branch (refining convolutions and the final map included), "points" only the maps the canvas
    reads. Prints the FLOPs of each (one patch, ``torch.utils.flop_counter``), their times
    (:func:`alternate`, ``--collect-pass-ab`` runs each) and whether the stitched maps agree bit for bit.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from glmed.models.sharing import LocalToGlobalCanvas

    model, global_image, patches, boxes, index = one_batch(args, "bidirectional")
    points = model.sharing.local_to_global_points
    with torch.inference_mode():
        global_maps = model.global_features(global_image)

        def collect(wanted: tuple[str, ...] | None) -> dict[str, torch.Tensor]:
            canvas = LocalToGlobalCanvas.like(global_maps, points)
            canvas.add(model.local_features(patches, global_maps, boxes, index, points=wanted), boxes, index)
            return canvas.maps()

        for name, wanted in (("full", None), ("points", points)):
            with FlopCounterMode(display=False) as counter:
                model.local_features(patches[:1], global_maps, boxes[:1], index[:1], points=wanted)
            print(f"{name}: {counter.get_total_flops() / 1e9:.1f} GFLOP per patch", flush=True)
        stitched = alternate({"full": lambda: collect(None), "points": lambda: collect(points)},
                             args.collect_pass_ab, args.batch_size)
    same = all(torch.equal(stitched["points"][p], stitched["full"][p]) for p in points)
    print(f"stitched maps bit-identical: {same}")
    return 0 if same else 1


def fold_ab(args: argparse.Namespace) -> int:
    """One batch's local pass of a bidirectional model, batch norm as built against folded (glmed.models.folding).

    The pass is the local branch with its global→local crops (each model's own global maps);
    ``--fold-ab`` runs of each, alternated (:func:`alternate`). Prints the largest difference of
    the final maps.
    """
    import torch

    from glmed.models.folding import fold_batch_norm
    from glmed.models.fpn import FINAL

    model, global_image, patches, boxes, index = one_batch(args, "bidirectional")
    models = {"as built": model, "folded": fold_batch_norm(model)}
    with torch.inference_mode():
        global_maps = {name: m.global_features(global_image) for name, m in models.items()}
        finals = alternate(
            {name: (lambda m=m, g=global_maps[name]: m.local_features(patches, g, boxes, index)[FINAL])
             for name, m in models.items()},
            args.fold_ab, args.batch_size)
    difference = float((finals["folded"] - finals["as built"]).abs().max())
    print(f"largest difference of the final maps: {difference:.2e} (largest value "
          f"{float(finals['as built'].abs().max()):.2e})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs=2, type=int, default=(1536, 2048), metavar=("HEIGHT", "WIDTH"),
                        help="image size (default 1536 2048; the issue's ISIC-sized image is 4499 6748)")
    parser.add_argument("--model", choices=["glnet", "c2f", "both"], default="both")
    parser.add_argument("--sharing", default="bidirectional")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                        help="torch threads (default OMP_NUM_THREADS, else 1: steadier on a shared machine)")
    parser.add_argument("--seed", type=int, default=30,
                        help="image and weight seed (30: a lesion of about 10%% of the image)")
    parser.add_argument("--amp", choices=["off", "bf16"], default=None, help="predict's amp (default: its own)")
    parser.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--no-prefetch", action="store_true", help="read patches on the main thread")
    parser.add_argument("--profiler", choices=["timers", "torch", "cprofile", "none"], default="timers")
    parser.add_argument("--memory-trace", action="store_true",
                        help="sample the resident size every 5 ms and say in which part the peak falls")
    parser.add_argument("--rows", type=int, default=25, help="rows of the torch/cProfile tables")
    parser.add_argument("--save-mask", default=None, help="save the mask as .npy (with --model both, per model)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line at the end")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="agreement of two saved masks, then exit")
    parser.add_argument("--matrix", action="store_true", help="every lever, each in a fresh process")
    parser.add_argument("--matrix-dir", default="/tmp/glmed-profile", help="where --matrix keeps its masks")
    parser.add_argument("--levers", default="float32,channels_last,no_prefetch",
                        help=f"--matrix's cases, comma-separated, the first the reference; of {sorted(LEVERS)}")
    parser.add_argument("--repeats", type=int, default=1, help="--matrix runs every case this many times")
    parser.add_argument("--before", default=None, metavar="DIR",
                        help="--matrix also runs the glmed package found in DIR (e.g. an earlier checkout's copy)")
    parser.add_argument("--local-pass-ab", type=int, default=0, metavar="N",
                        help="time one batch's local pass N times in each layout, alternating, then exit")
    parser.add_argument("--collect-pass-ab", type=int, default=0, metavar="N",
                        help="time one batch's collect pass N times computing every map and the shared maps only, "
                             "alternating, then exit")
    parser.add_argument("--fold-ab", type=int, default=0, metavar="N",
                        help="time one batch's local pass N times with batch norm as built and folded, alternating, "
                             "then exit")
    args = parser.parse_args(argv)
    if args.local_pass_ab:
        return local_pass_ab(args)
    if args.collect_pass_ab:
        return collect_pass_ab(args)
    if args.fold_ab:
        return fold_ab(args)
    if args.compare:
        compare(*args.compare)
        return 0
    if args.matrix:
        return matrix(args)
    import torch

    torch.set_num_threads(args.threads)
    results = [profile_one(args, kind) for kind in (["glnet", "c2f"] if args.model == "both" else [args.model])]
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
