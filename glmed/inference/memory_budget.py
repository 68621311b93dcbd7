"""Fitting a prediction to a memory budget: ``predict(..., max_memory="1GB")``.

:func:`plan_for_budget` picks the patch batch size (and, where float32 cannot meet the budget
and the device computes bfloat16 natively, bf16 autocast) so that the inference's estimated
peak memory stays under the budget; :attr:`MemoryPlan.note` says what it chose.

How the estimate is made: measured, on the very model, device, type, autocast and memory
layout of the call, by running its passes once on dummy inputs before the prediction starts
(:func:`measure_passes`): the global pass, bidirectional sharing's collect pass and second
global pass, and the local pass (the inferer's own ``_refined_answers``: local branch, global
crops, aggregation head, softmax, copy to the host) at batch 1 and at batch 2. Each pass's peak
is taken above what was allocated when it began (:class:`MemoryMeter`): on CUDA with
``torch.cuda.max_memory_allocated``; on the CPU from ``torch.profiler``'s memory events, which
record every allocation and free of PyTorch's CPU allocator, including the buffers a kernel makes
and frees inside one operation (a convolution's column buffer, oneDNN's reordered weights: on
ResNet18-FPN local passes these added half again to the tensors alive between operations). Where
a profiler is already running, or the build has none, the count falls back to
:class:`LiveTensorBytes`, which sees only the tensors alive between operations.

What is not a pass is counted from the sizes of the arrays the inferer keeps, which are known
exactly: the global input, the global maps kept through the local passes, the global answer
that coarse-to-fine and ``refine="uncertain"`` keep, the coarse mask's upsampling band, and, on
the CPU (where the budget is the process's memory, so host arrays count), the patch merger's open
cells (:meth:`~glmed.inference.merging.RowBandMerger.peak_bytes`), the output and coarse masks
when they are held in memory, the batch being read ahead (measured: reading and normalising one
batch) and the previous batch's probabilities. On a GPU the budget is the GPU's memory, and those
stay on the host. With test-time augmentation (``tta``) the local pass is measured running every
view (each view's transformed patches and the running sum of their probabilities), and each view's
global maps (and, for ``refine="uncertain"``, its first answer) count once per view, as the
inferer holds them all through the local passes.

With ``reuse_encoder`` (:mod:`glmed.inference.encoder_reuse`) the encoder maps the collect pass
keeps are counted from their measured size per patch (``encoded``), for every patch of the image
and every view, in the collect pass, the second global pass and the local pass: the most they
can hold (a coarse-to-fine box or ``refine="uncertain"`` keeps fewer). Left unset, it is switched
on when they fit the budget beside the batch chosen without them, and the note says which.

Every phase (global pass, coarse mask, collect pass, second global pass, local pass) is then a
line ``fixed + per_patch × batch`` through its totals at batch 1 and 2, and the estimate at a
batch is the highest phase. The two points are measured rather than the per-patch cost assumed
to be all of the batch-1 pass, so a part that does not grow with the batch (the reordered
weights, a workspace) is not multiplied. Where PyTorch picks another convolution kernel at batch
2 than at batch 1 (it does for inputs of a few thousand values, i.e. tiny models, not for
508-pixel patches), the slope includes the switch and the estimate errs high.

Why measured at run time rather than a table stored with the package (measured once per
backbone and scaled by patch size and channels): the table is free at run time, but it would
drift with every change to the network or the inferer, could not know the device, autocast,
memory layout, thread count (which changes PyTorch's choice of kernels) or another helper's
change to the model, and would not cover the small models tests use. The measurement costs the
passes above: one global pass and three patches' local pass (batch 1, then 2), and for
bidirectional sharing also three patches' collect pass and a second global pass, about 3–6
patches' worth of compute before the first patch is read (38 s for ResNet18 bidirectional on
the 2-core CPU of docs/benchmarks.md), plus, on the CPU, starting the profiler (seconds, the
first time in a process; some builds print a line as it starts and stops). It is cached per
(model class, network config, module and weight counts, device, type, autocast, layout) for the
process, so a folder of images, or the same model called again, pays it once. The batch-2 passes
are skipped when batch 1 already does not fit (the error then comes at once), and on a GPU an
out-of-memory error at batch 2 means batch 1.

What the estimate leaves out, on the CPU: the allocator's own behaviour (glibc keeps freed
buffers for reuse, and its heap can hold well beyond what is alive: the resident peak ran
1.4–2.0× the estimate with glibc's defaults, and within a few percent of it with
``MALLOC_MMAP_THRESHOLD_=131072``, which hands large buffers back as they are freed; see
docs/benchmarks.md), memory the process touches once (libraries' code, compiled kernels), and
short-lived buffers between passes (the merger's arg-max of finished rows), far below a pass's
peak.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import re
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from glmed.conventions import Size
from glmed.geometry import patch_grid
from glmed.inference.merging import RowBandMerger, label_dtype, upsample_band_bytes, upsample_rows
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.fpn import FINAL
from glmed.models.glnet import GLNet, GLNetConfig, Sharing
from glmed.models.placement import Placement
from glmed.models.sharing import collect_local_context

if TYPE_CHECKING:
    from glmed.inference.inferer import GlobalLocalInferer

__all__ = ["LiveTensorBytes", "MemoryBudget", "MemoryMeter", "MemoryPlan", "Phase", "measure_passes", "parse_memory",
           "plan_for_budget", "storage_bytes"]

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e([+-]?[0-9]+))?\s*([a-z]*)\s*$", re.IGNORECASE)
_DECIMAL = ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "kB"), (1, "bytes"))
_BINARY = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"), (1, "bytes"))


@dataclass(frozen=True)
class MemoryBudget:
    """A memory budget in bytes, and whether it was written in binary units (GiB) or decimal ones (GB).

    Reports (:meth:`format`) use the same family of units and the budget's own scale.
    """

    nbytes: int
    binary: bool = False

    @property
    def _unit(self) -> tuple[int, str]:
        units = _BINARY if self.binary else _DECIMAL
        return next(((size, name) for size, name in units if self.nbytes >= size), units[-1])

    def format(self, nbytes: float) -> str:
        """``nbytes`` in the budget's unit, e.g. ``"0.83 GB"`` for a budget of gigabytes."""
        size, name = self._unit
        value = nbytes / size
        digits = 0 if value >= 100 or size == 1 else 1 if value >= 10 else 2
        return f"{value:.{digits}f} {name}"

    def __str__(self) -> str:
        size, name = self._unit
        return f"{self.nbytes / size:g} {name}"


def parse_memory(value: str | int | float | MemoryBudget, option: str = "max_memory") -> MemoryBudget:
    """A memory size: ``"1GB"``, ``"512 MB"``, ``"1.5GiB"``, or a number of bytes.

    Decimal units (kB/KB, MB, GB, TB: powers of 1000) and binary ones (KiB, MiB, GiB, TiB:
    powers of 1024), any case, with or without a space; a bare number (or ``"B"``) is bytes.

    Raises:
        ValueError: naming ``option``, for anything else, or a size under one byte.
    """
    if isinstance(value, MemoryBudget):
        return value
    nbytes: float
    binary = False
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{option} must be a size such as '1GB', '512MB', '1.5GiB' or a number of bytes, "
                         f"got {value!r}")
    if isinstance(value, str):
        match = _SIZE.match(value)
        unit = match.group(3).lower() if match else ""
        if match is None or unit not in _UNITS:
            raise ValueError(f"{option}: cannot read {value!r} as a size; write e.g. '1GB', '512MB', '1.5GiB' "
                             "or a number of bytes")
        exponent = int(match.group(2)) if match.group(2) else 0
        nbytes = float(match.group(1)) * 10.0**exponent * _UNITS[unit]
        binary = unit.endswith("ib")
    else:
        nbytes = float(value)
    if not math.isfinite(nbytes) or nbytes < 1:
        raise ValueError(f"{option} must be at least one byte, got {value!r}")
    return MemoryBudget(int(nbytes), binary)


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages created inside the block on one kind of device while they live, and their peak.

    Every operation's outputs are looked at as it returns: a storage that is new (not one of
    its inputs', not already counted) is counted until it is freed (a finalizer on the storage,
    which PyTorch keeps alive exactly as long as its memory). Views and in-place results add
    nothing; storages that existed before the block are never counted, and freeing them is not
    seen, so :attr:`peak` is what the block added at its highest. Buffers a kernel allocates and
    frees inside one operation are not seen. This thread's operations only.

    Args:
        device_type: ``"cpu"`` (or another device's type) whose storages are counted.
    """

    def __init__(self, device_type: str = "cpu") -> None:
        super().__init__()
        self.device_type = device_type
        self.live = 0
        self.peak = 0
        self._alive: dict[int, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {_data_pointer(tensor) for tensor in _tensors((args, kwargs))}
        for tensor in _tensors(out):
            if tensor.device.type != self.device_type:
                continue
            try:
                storage = tensor.untyped_storage()
            except (RuntimeError, NotImplementedError):  # tensors without a plain storage
                continue
            pointer, nbytes = storage.data_ptr(), storage.nbytes()
            if not nbytes or pointer in inputs or pointer in self._alive:
                continue
            self._alive[pointer] = nbytes
            self.live += nbytes
            weakref.finalize(storage, self._freed, pointer)
        self.peak = max(self.peak, self.live)
        return out

    def _freed(self, pointer: int) -> None:
        self.live -= self._alive.pop(pointer, 0)


class _CudaPeak:
    """Peak of ``torch.cuda.max_memory_allocated`` inside the block, above what was allocated at its start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> _CudaPeak:
        torch.cuda.synchronize(self.device)
        self._start = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device) - self._start


class _Block:
    """One measured block: ``peak`` is its memory peak above its start, in bytes, once known."""

    peak = 0


class MemoryMeter:
    """Measures blocks of code on one device: each block's peak memory above what was allocated at its start.

    On CUDA, ``torch.cuda.max_memory_allocated`` (the device's peak statistics are reset for each
    block). On the CPU, ``torch.profiler``'s memory events (``profile_memory=True``): every
    allocation and free of PyTorch's CPU allocator, those inside a kernel (a convolution's
    column buffer) included; a session covers several blocks, each marked by a
    ``record_function``, and their peaks are known when the session ends. Where that is not
    possible (a profiler is already running in this thread, or this build has none), a
    :class:`LiveTensorBytes` per block, which does not see buffers inside kernels.

    Use::

        meter = MemoryMeter(device)
        with meter.session():
            with meter.block() as first:
                ...
        first.peak  # read after the session
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._profiler: Any = None
        self._windows: list[tuple[str, _Block]] = []
        self.kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "tensors alive"

    @contextmanager
    def session(self) -> Iterator[MemoryMeter]:
        """Blocks measured inside are read when this ends."""
        use_profiler = self.device.type == "cpu" and _can_profile()
        if not use_profiler:
            yield self
            return
        from torch.profiler import ProfilerActivity, profile

        self._windows = []
        self.kind = "torch.profiler memory events"
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
            self._profiler = profiler
            try:
                yield self
            finally:
                self._profiler = None
        _peaks_from_events(profiler, self._windows)

    @contextmanager
    def block(self) -> Iterator[_Block]:
        """One block to measure; its ``peak`` is known after the block (CUDA, tensors alive) or the session."""
        block = _Block()
        if self.device.type == "cuda":
            with _CudaPeak(self.device) as counter:
                yield block
            block.peak = counter.peak
        elif self._profiler is not None:
            from torch.profiler import record_function

            name = f"glmed.max_memory.{len(self._windows)}"
            self._windows.append((name, block))
            with record_function(name):
                yield block
        else:
            with LiveTensorBytes(self.device.type) as live:
                yield block
            block.peak = live.peak


def _can_profile() -> bool:
    """Whether a CPU profiler session may start here: the build has Kineto and none is running."""
    try:
        from torch.profiler import kineto_available

        return bool(kineto_available()) and not torch._C._autograd._profiler_enabled()
    except (ImportError, AttributeError):
        return False


def _peaks_from_events(profiler: Any, windows: list[tuple[str, _Block]]) -> None:
    """Each window's peak: the running sum of the CPU allocator's events inside it, at its highest."""
    events = list(profiler.profiler.kineto_results.events())
    spans = {event.name(): (event.start_ns(), event.end_ns()) for event in events if event.name().startswith(
        "glmed.max_memory.")}
    memory = sorted((event.start_ns(), event.nbytes()) for event in events if event.name() == "[memory]")
    for name, block in windows:
        begin, end = spans[name]
        total = peak = 0
        for time, nbytes in memory:
            if begin <= time <= end:
                total += nbytes
                peak = max(peak, total)
        block.peak = peak


@dataclass(frozen=True)
class PassMemory:
    """Bytes measured by :func:`measure_passes`; pairs are at batch 1 and at batch 2.

    Attributes:
        image: the global input.
        first_global: the first global pass (and the global head) at its peak, above what was
            alive before it; its maps and answer included.
        maps: all the first pass's maps (what the collect pass reads).
        kept: the maps the local passes read.
        logits: the global branch's answer, as coarse-to-fine and ``refine="uncertain"`` keep it.
        second_global: bidirectional sharing's second global pass at its peak.
        context: the stitched local maps the second global pass takes.
        collect: the collect pass at its peak (its canvas included).
        local: the local pass at its peak, through softmax and the copy to the host.
        probabilities: one batch's probabilities on the host.
        inputs: one batch of normalised patches (on the CPU, made before the pass).
        reading: reading and normalising one batch at its peak (the raw pixels included).
        at_2: whether batch 2 was measured. When not, each batch-2 figure is twice batch 1's:
            the whole pass counts per patch, the most it can.
        most: the largest batch the device can take at all (1 when batch 2 ran out of GPU
            memory), or None.
        encoded: one patch's encoder maps as the collect pass keeps them for ``reuse_encoder``
            (bidirectional sharing; 0 otherwise).
    """

    image: int
    first_global: int
    maps: int
    kept: int
    logits: int
    second_global: int
    context: int
    collect: tuple[int, int]
    local: tuple[int, int]
    probabilities: tuple[int, int]
    inputs: tuple[int, int]
    reading: tuple[int, int]
    at_2: bool = True
    most: int | None = None
    encoded: int = 0


_PER_BATCH = ("collect", "local", "probabilities", "inputs", "reading")

_MEASURED: dict[tuple, PassMemory] = {}
"""Measurements of this process (batch 2 included), by :func:`_cache_key`."""


def _cache_key(
    model: GLNet, config: GLNetConfig, placement: Placement, amp: str, channels_last: bool, views: int
) -> tuple:
    network = (config.num_classes, config.backbone, config.sharing, config.fpn_channels, config.in_channels,
               config.global_size, config.patch_size)
    # The modules and weights counted too, so a model changed in place (batch norm folded) is measured anew;
    # the thread count changes which convolution kernels PyTorch picks.
    structure = (sum(1 for _ in model.modules()), sum(p.numel() for p in model.parameters()))
    return (type(model).__qualname__, network, structure, str(placement.device), str(placement.dtype), amp,
            channels_last, torch.get_num_threads(), views)


def measure_passes(
    inferer: GlobalLocalInferer,
    model: GLNet,
    config: GLNetConfig,
    placement: Placement,
    stop_after_1: Callable[[PassMemory], bool] | None = None,
) -> PassMemory:
    """Run the model's inference passes on dummy inputs and measure their memory (cached for the process).

    The model must already be where and how the inferer runs it (evaluation mode, device,
    layout), inside ``torch.inference_mode``; ``inferer`` gives the autocast, layout and
    normalisation. The passes are the inferer's own: the first global pass and head; for
    bidirectional sharing the collect pass and the second global pass; the local pass through
    softmax and the copy to the host. Dummy inputs are zeros: the memory of these dense passes
    does not depend on the values. A pass's figure is its peak above what was allocated when it
    began (:class:`MemoryMeter`); what it begins with is counted apart (:func:`_phases`), so the
    first pass's maps stand in for the second's here (same sizes).

    Args:
        inferer: the prediction's settings (autocast, layout, normalisation).
        model: the network, placed as for the prediction.
        config: its settings for this prediction (sizes, sharing).
        placement: where and in which type it runs.
        stop_after_1: called with the batch-1 figures; True stops there (batch 2 would not fit
            anyway), and the result is not cached.
    """
    key = _cache_key(model, config, placement, inferer.amp, inferer.channels_last, len(inferer.views))
    if key in _MEASURED:
        return _MEASURED[key]
    meter = MemoryMeter(placement.device)
    state = _Passes(inferer, model, config, placement, meter)
    with meter.session():
        state.global_passes()
        state.batch(1)
    state.resolve()
    most = None
    if stop_after_1 is None or not stop_after_1(state.result()):
        try:
            with meter.session():
                state.batch(2)
            state.resolve()
        except torch.cuda.OutOfMemoryError:
            most = 1  # two patches do not fit the GPU at all
    result = state.result(most)
    if result.at_2:
        _MEASURED[key] = result
    return result


class _Passes:
    """The dummy passes :func:`measure_passes` runs, and the blocks measuring them."""

    def __init__(
        self, inferer: GlobalLocalInferer, model: GLNet, config: GLNetConfig, placement: Placement, meter: MemoryMeter
    ) -> None:
        self.inferer, self.model, self.config, self.placement, self.meter = inferer, model, config, placement, meter
        self.sizes = dict(image=0, maps=0, kept=0, logits=0, context=0, encoded=0)  # bytes of what the passes keep
        self.blocks: dict[str, _Block] = {}  # first_global, second_global, and "NAME BATCH" for the rest
        self.per_batch: dict[str, dict[int, int]] = {name: {} for name in _PER_BATCH}
        self.global_maps: dict[str, torch.Tensor] | None = None
        self.kept: dict[str, torch.Tensor] | None = None
        self.image: torch.Tensor | None = None

    def _dummy(self, batch: int, side: int) -> np.ndarray:
        return np.zeros((batch, side, side, self.config.in_channels), dtype=np.uint8)

    def global_passes(self) -> None:
        """The first global pass and head (what the local passes read is kept for them)."""
        model, placement, inferer = self.model, self.placement, self.inferer
        if not model.sharing.has_global:
            return
        side = self.config.global_size
        self.image = placement.put(inferer._prepare_pixels(self._dummy(1, side), "dummy"))
        with self.meter.block() as self.blocks["first_global"], inferer._autocast(placement):
            self.global_maps = model.global_features(self.image)
            logits = model.global_logits(self.global_maps, (side, side))[0].float()
        self.sizes["image"] = storage_bytes(self.image)
        self.sizes["maps"], self.sizes["logits"] = storage_bytes(*self.global_maps.values()), storage_bytes(logits)
        self.kept = {point: self.global_maps[point] for point in (*model.sharing.global_to_local_points, FINAL)}
        self.sizes["kept"] = storage_bytes(*self.kept.values())

    def batch(self, batch: int) -> None:
        """Reading, the collect pass (and, at batch 1, the second global pass) and the local pass at ``batch``."""
        model, placement, inferer, meter = self.model, self.placement, self.inferer, self.meter
        patch = self.config.patch_size
        raw = self._dummy(batch, patch)
        with meter.block() as self.blocks[f"reading {batch}"]:
            pixels = inferer._prepare_pixels(raw, "dummy")
        self.per_batch["inputs"][batch] = storage_bytes(pixels)
        self.raw = raw.nbytes
        boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5]] * batch)  # patches a quarter of the image, on the host
        index = torch.zeros(batch, dtype=torch.long)
        if model.sharing is Sharing.BIDIRECTIONAL and self.global_maps is not None and self.image is not None:
            encoded: list[int] = []  # the encoder maps reuse_encoder would keep, bytes
            with meter.block() as self.blocks[f"collect {batch}"]:
                patches = placement.put(pixels)
                with inferer._autocast(placement):
                    context = collect_local_context(model, self.global_maps, [(patches, boxes, index)],
                                                    lambda _, maps: encoded.append(storage_bytes(*maps.values())))
                del patches
            if batch == 1:
                self.sizes["context"] = storage_bytes(*context.values())
                self.sizes["encoded"] = encoded[0]
                with meter.block() as self.blocks["second_global"], inferer._autocast(placement):
                    second = model.global_features(self.image, context)
                del second
            del context
        with meter.block() as self.blocks[f"local {batch}"]:
            patches = placement.put(pixels)
            batches = iter([(np.zeros((batch, 4), dtype=np.int64), boxes, patches)])
            views = [(view, self.kept) for view in inferer.views]  # one set of maps stands in for each view's
            answers = list(inferer._refined_answers(model, batches, views, placement, (patch, patch)))
            del patches
        self.per_batch["probabilities"][batch] = storage_bytes(*answers)

    def resolve(self) -> None:
        """Read the blocks' peaks (after their session)."""
        for name, block in self.blocks.items():
            kind, _, batch = name.partition(" ")
            if batch:
                extra = self.raw if kind == "reading" else 0  # the raw pixels are numpy's, not PyTorch's
                self.per_batch[kind][int(batch)] = block.peak + extra

    def result(self, most: int | None = None) -> PassMemory:
        """The figures; where batch 2 was not measured, twice batch 1's (all of a pass per patch)."""
        at_2 = 2 in self.per_batch["local"]
        pairs = {name: (values.get(1, 0), values.get(2, 0) if at_2 else 2 * values.get(1, 0))
                 for name, values in self.per_batch.items()}
        peak = {name: self.blocks[name].peak if name in self.blocks else 0
                for name in ("first_global", "second_global")}
        return PassMemory(
            image=self.sizes["image"], first_global=peak["first_global"], maps=self.sizes["maps"],
            kept=self.sizes["kept"], logits=self.sizes["logits"], second_global=peak["second_global"],
            context=self.sizes["context"], collect=pairs["collect"], local=pairs["local"],
            probabilities=pairs["probabilities"], inputs=pairs["inputs"], reading=pairs["reading"], at_2=at_2,
            most=most, encoded=self.sizes["encoded"])


@dataclass(frozen=True)
class Phase:
    """One part of a prediction whose memory is ``fixed + per_patch × batch`` bytes at its peak."""

    name: str
    fixed: int
    per_patch: int

    def at(self, batch: int) -> int:
        """The estimated peak of this phase at ``batch`` patches per pass, bytes."""
        return self.fixed + self.per_patch * batch

    @classmethod
    def through(cls, name: str, at_1: int, at_2: int) -> Phase:
        """The line through a phase's totals at batch 1 and 2 (never falling: a lower batch-2 total is noise)."""
        per_patch = max(at_2 - at_1, 0)
        return cls(name, at_1 - per_patch, per_patch)


@dataclass(frozen=True)
class MemoryPlan:
    """What :func:`plan_for_budget` chose for a prediction, and why.

    Attributes:
        budget: the ``max_memory`` asked for.
        batch_size: patches per pass, the largest whose estimate fits (at most ``cap``).
        amp: the autocast mode the prediction runs with (``"bf16"`` only when float32 could
            not fit, or when asked for).
        phases: the estimate's lines, one per phase of the prediction.
        cap: the most patches a batch may hold: ``batch_size`` as given, or the image's patches.
        capped_by: ``"batch_size"``, ``"patches"`` (the estimate would allow more), or None.
        float32_minimum: when bf16 was switched on to meet the budget, float32's estimate at batch 1.
        device: where the passes were measured.
        retains_freed: the CPU's allocator is glibc's with its defaults, which keep freed buffers
            for reuse, so the resident size can run well above the estimate (the note says so).
        reuse_encoder: the prediction keeps the collect pass's encoder maps (counted in ``phases``).
        encoder_store: the most those maps can hold, bytes (counted or not).
        reuse_chosen: ``reuse_encoder`` was the caller's choice (else the plan's, from the budget).
    """

    budget: MemoryBudget
    batch_size: int
    amp: str
    phases: tuple[Phase, ...]
    cap: int
    capped_by: str | None = None
    float32_minimum: int | None = None
    device: str = "cpu"
    retains_freed: bool = False
    reuse_encoder: bool = False
    encoder_store: int = 0
    reuse_chosen: bool = True

    def estimate(self, batch: int) -> int:
        """The estimated peak at ``batch`` patches per pass: the highest phase, bytes."""
        return max(phase.at(batch) for phase in self.phases)

    def peak_phase(self, batch: int) -> Phase:
        """The phase holding the peak at ``batch``."""
        return max(self.phases, key=lambda phase: phase.at(batch))

    @property
    def note(self) -> str:
        """One line for ``result.notes``: the batch, its estimate and how it splits."""
        budget, batch = self.budget, self.batch_size
        phase = self.peak_phase(batch)
        line = (f"max_memory {budget}: batch {batch} patch{'' if batch == 1 else 'es'} (estimated peak "
                f"{budget.format(self.estimate(batch))} in the {phase.name}: {budget.format(phase.fixed)} fixed + "
                f"{budget.format(phase.per_patch)} per patch, measured on {self.device})")
        if self.capped_by == "patches":
            line += f"; the image has no more than {self.cap} patches per pass to fill"
        elif self.capped_by == "batch_size":
            line += f"; batch_size {self.cap} is the most asked for"
        if self.float32_minimum is not None:
            line += (f"; bf16 autocast switched on: float32 needs {budget.format(self.float32_minimum)} "
                     "even at batch 1")
        if self.encoder_store and not self.reuse_chosen:
            held = budget.format(self.encoder_store)
            line += (f"; reuse_encoder switched on: the collect pass's encoder maps ({held} at most) fit beside it"
                     if self.reuse_encoder else
                     f"; reuse_encoder left off: the collect pass's encoder maps ({held} at most) would not fit")
        if self.retains_freed:
            line += ("; glibc's allocator keeps freed buffers, so the resident size can run up to 2× the estimate: "
                     "MALLOC_MMAP_THRESHOLD_=131072 in the environment keeps it close (docs/models.md)")
        return line


def plan_for_budget(
    inferer: GlobalLocalInferer,
    model: GLNet,
    config: GLNetConfig,
    placement: Placement,
    image_size: Size,
    *,
    out_in_memory: bool,
    with_coarse: bool,
    weights_moved: bool,
    native_bf16: bool,
) -> MemoryPlan:
    """The largest batch (and the autocast) whose estimated peak stays under ``inferer.max_memory``.

    The model must be placed as for the prediction (see :func:`measure_passes`).

    Args:
        inferer: the prediction's settings; ``max_memory`` must be set. Its ``batch_cap``
            (``batch_size`` as the caller gave it, or None) bounds the batch; without one the
            image's patch count does. Its ``amp_chosen`` says whether ``amp`` was the caller's.
        model: the network.
        config: its settings for this prediction.
        placement: where the prediction runs.
        image_size: ``(height, width)`` of the image.
        out_in_memory: the mask is an in-memory array (not a file) made by the prediction.
        with_coarse: a full-size coarse mask is kept too.
        weights_moved: the model was moved to ``placement.device`` for the call, so its
            weights count against the budget.
        native_bf16: the device computes bfloat16 natively (see ``DEFAULT_AMP``); only then
            may bf16 be switched on when the caller left ``amp`` unset.

    Raises:
        ValueError: when even batch 1 does not fit (with bf16 too, where it may be tried),
            naming the estimate, which is the least budget that works.
    """
    budget = inferer.max_memory
    if budget is None:
        raise ValueError("plan_for_budget needs an inferer with max_memory set")
    grid = patch_grid(image_size, config.patch_size, config.overlap)
    cap = inferer.batch_cap if inferer.batch_cap is not None else max(len(grid), 1)
    device = str(placement.device)
    retains = placement.device.type == "cpu" and _glibc_retains_freed()
    if isinstance(model, CoarseToFineGLNet):
        # Each box has its own grid, whose last (clamped) row can overlap the one above by nearly a
        # patch: bound it by a patch-high band across the image's width.
        merger = 4 * config.num_classes * min(config.patch_size, int(image_size[0])) * int(image_size[1])
    else:
        merger = RowBandMerger.peak_bytes(config.num_classes, grid.boxes, image_size)

    # reuse_encoder's kept maps, at most every patch of the image (a box or refine="uncertain" keeps fewer)
    reusable = len(grid) if model.sharing is Sharing.BIDIRECTIONAL else 0

    def plan(amp: str, reuse: bool = inferer.reuse_encoder) -> MemoryPlan:
        trial = copy.copy(inferer)
        trial.amp = amp

        def phases_of(measured: PassMemory) -> list[Phase]:
            return _phases(measured, model, config, placement, image_size, inferer.refine, out_in_memory,
                           with_coarse, weights_moved, len(inferer.views), merger, reusable if reuse else 0)

        def over_at_1(measured: PassMemory) -> bool:  # then batch 2 need not be measured
            return max(phase.at(1) for phase in phases_of(measured)) > budget.nbytes

        measured = measure_passes(trial, model, config, placement, stop_after_1=over_at_1)
        phases = phases_of(measured)
        most = cap if measured.most is None else min(cap, measured.most)
        batch = _largest_batch(phases, budget.nbytes, most)
        capped_by = None
        if batch == cap and _largest_batch(phases, budget.nbytes, cap + 1) > cap:
            capped_by = "batch_size" if inferer.batch_cap is not None else "patches"
        return MemoryPlan(budget, batch, amp, tuple(phases), cap, capped_by, device=device, retains_freed=retains,
                          reuse_encoder=reuse and reusable > 0,
                          encoder_store=reusable * len(inferer.views) * measured.encoded,
                          reuse_chosen=inferer.reuse_chosen)

    chosen = plan(inferer.amp)
    if chosen.batch_size == 0 and not inferer.amp_chosen and inferer.amp != "bf16" and native_bf16:
        half = plan("bf16")
        if half.batch_size > 0:
            chosen = replace(half, float32_minimum=chosen.estimate(1))
        else:
            chosen = half
    if chosen.batch_size > 0:
        if not inferer.reuse_chosen and reusable:  # keep the encoder maps if they fit beside the batch chosen
            keeping = plan(chosen.amp, reuse=True)
            if keeping.batch_size >= chosen.batch_size:
                return replace(keeping, batch_size=chosen.batch_size, float32_minimum=chosen.float32_minimum)
        return chosen
    if chosen.batch_size == 0:
        phase = chosen.peak_phase(1)
        if chosen.amp == "bf16":
            tried = " with bf16 autocast"
        elif inferer.amp_chosen or not native_bf16:
            tried = (f" (amp={inferer.amp!r} was asked for)" if inferer.amp_chosen
                     else f" (bf16 autocast, which would need less, is not native on {placement.device.type} here, "
                          "so it was not tried)")
        else:
            tried = ""
        raise ValueError(f"max_memory {budget} is too small: one patch at a time needs an estimated "
                         f"{budget.format(chosen.estimate(1))}{tried} ({budget.format(phase.fixed)} fixed + "
                         f"{budget.format(phase.per_patch)} per patch, in the {phase.name}, measured on {device}); "
                         f"give at least {budget.format(chosen.estimate(1))}"
                         + (f", or reuse_encoder=False, whose kept encoder maps ({budget.format(chosen.encoder_store)}"
                            " at most) this counts" if chosen.reuse_encoder else ""))
    return chosen


def _phases(
    measured: PassMemory,
    model: GLNet,
    config: GLNetConfig,
    placement: Placement,
    image_size: Size,
    refine: str,
    out_in_memory: bool,
    with_coarse: bool,
    weights_moved: bool,
    views: int = 1,
    merger: int = 0,
    reused: int = 0,
) -> list[Phase]:
    """The prediction's phases as lines through their totals at batch 1 and 2 (see the module's docstring).

    ``merger``: the bytes the patch merger holds at most (:meth:`RowBandMerger.peak_bytes`).
    ``reused``: the patches whose encoder maps ``reuse_encoder`` keeps from the collect pass
    through the final pass (0: off), once per view.

    With test-time augmentation (``views`` > 1) each view's global maps (and first answer) are
    held together, so they count once per view; the local pass was measured with every view.
    """
    mode = model.sharing
    coarse_to_fine = isinstance(model, CoarseToFineGLNet)
    uncertain = refine == "uncertain" and mode.has_global
    on_host = placement.device.type == "cpu"  # the budget is then the process's memory: host arrays count
    height, width = int(image_size[0]), int(image_size[1])
    masks = (int(out_in_memory) + int(with_coarse)) * height * width * label_dtype(config.num_classes).itemsize
    always = (masks if on_host else 0) + (_weights_bytes(model) if weights_moved else 0)
    # the answers kept through the local passes: one per view for refine="uncertain"
    logits = measured.logits * (int(coarse_to_fine) + views * int(uncertain))
    others = (views - 1) * measured.maps  # the other views' maps, held beside the one being computed
    band = merger if on_host else 0
    store = reused * views * measured.encoded  # reuse_encoder's maps, full from the end of the collect pass

    def reading(i: int) -> int:
        """The batch in the pass and the next one being read: host memory."""
        return measured.inputs[i] + measured.reading[i] if on_host else 0

    phases = []
    if mode.has_global:
        total = always + measured.image + others + measured.first_global + (measured.logits if coarse_to_fine else 0)
        phases.append(Phase("global pass", total, 0))
        if with_coarse or coarse_to_fine:  # the coarse mask upsampled, a band of rows at a time
            rows = min(upsample_rows(config.num_classes, width), height)
            upsampling = upsample_band_bytes(config.num_classes, rows, width)
            phases.append(Phase("coarse mask", always + measured.image + views * measured.maps + logits
                                + views * measured.logits + upsampling, 0))
    if mode is Sharing.BIDIRECTIONAL:
        base = always + measured.image + views * measured.maps + logits
        phases.append(Phase.through("collect pass", *(base + store + measured.collect[i] + reading(i)
                                                      for i in (0, 1))))
        phases.append(Phase("second global pass", always + measured.image + others + measured.context + logits
                            + store + measured.second_global, 0))
    base = always + band + measured.image + views * measured.kept + logits + store
    previous = 2 if uncertain else 1  # the previous batch's answers (and, skipping patches, the global ones')
    local = (base + measured.local[i] + reading(i) + (previous * measured.probabilities[i] if on_host else 0)
             for i in (0, 1))
    phases.append(Phase.through("local pass", *local))
    return phases


def _glibc_retains_freed() -> bool:
    """Whether this process allocates through glibc's malloc with its dynamic mmap threshold (not set by hand).

    Then large freed buffers stay in its heap for reuse rather than going back to the system, and
    the resident size runs 1.4–2× the live memory the estimate counts (docs/benchmarks.md).
    Setting the threshold (``MALLOC_MMAP_THRESHOLD_``, or ``MALLOC_TRIM_THRESHOLD_``,
    ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_``, which fix it too) is read from the environment.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    fixed = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return not any(name in os.environ for name in fixed) and "mmap_threshold" not in tunables


def _largest_batch(phases: list[Phase], budget: int, cap: int) -> int:
    """The largest batch, at most ``cap``, whose every phase fits ``budget`` bytes; 0 when batch 1 does not."""
    best = cap
    for phase in phases:
        if phase.per_patch <= 0:
            if phase.fixed > budget:
                return 0
            continue
        best = min(best, (budget - phase.fixed) // phase.per_patch)
    return max(best, 0)


def _weights_bytes(model: torch.nn.Module) -> int:
    return sum(t.nbytes for t in model.parameters()) + sum(t.nbytes for t in model.buffers())


def storage_bytes(*tensors: torch.Tensor) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors in an operation's arguments or outputs (nested tuples, lists and dicts)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _data_pointer(tensor: torch.Tensor) -> int:
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return -1
