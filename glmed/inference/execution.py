"""How GLNet's forward passes run: autocast type, weight layout, and patches read ahead.

These are the levers of :class:`~glmed.inference.inferer.GlobalLocalInferer` that change the
cost of a pass and not what it computes (up to floating-point rounding, measured below): bf16
autocast, channels-last weights, and reading the next batch of patches on a background
thread. They live apart from the inferer's loop so that loop reads as GLNet's algorithm.
Tests switch :data:`PREFETCH` and :func:`cpu_has_bf16` here to compare paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch

AMP_MODES = {"off": None, "bf16": torch.bfloat16}
"""Autocast modes of the forward passes: ``"off"`` (the model's own type) or bfloat16."""

DEFAULT_AMP = "off"
"""``amp`` by default: float32, bf16 being slower and less exact on the CPU it was measured on.

Measured with ``benchmarks/profile_inference.py`` (docs/benchmarks.md) on a 2-core AVX2 CPU
without native bfloat16 (oneDNN reports no bf16 support): one ResNet50-FPN local pass under bf16
autocast took 250 s against 2.75 s in float32 (its convolutions fall back to a reference kernel;
channels-last narrows that to about 6×), and coarse-to-fine bidirectional GLNet on the 2048×1536
profile image took 201 s in bf16 + channels-last against 35 s in float32. Its mask differed from
float32's in 1 pixel of 3.1 million as made, and in 0.44% of the box's pixels (Jaccard 0.991)
with both thresholded at float32's median probability, where untrained heads put half the pixels
near the boundary; probabilities moved by up to 1e-3. On GPUs and on CPUs with AVX512-BF16/AMX,
bf16 is the option to try; :func:`glmed.predict` notes when it runs on a CPU without native support.
"""

DEFAULT_CHANNELS_LAST = False
"""``channels_last`` by default: off, as it bought no time on the CPU it was measured on.

On the 2048×1536 profile image (``benchmarks/profile_inference.py``, docs/benchmarks.md) whole-image
bidirectional GLNet took 132 s in channels-last against 138 s in the default layout and
coarse-to-fine 35.1 s against 35.4 s (medians of 4), within the noise of a shared machine; one
batch's local pass with its global→local crops, alternated in one process, took 1.02× as long.
Its peak memory was 50–250 MB higher (layout conversions). Masks agreed on every pixel as made,
and on all but 0.00013% at the median threshold; probabilities moved by at most 9e-8.
"""

PREFETCH = True
"""Read the next batch of patches on a background thread while the current one computes (tests
turn it off to compare with reading in line)."""

_T = TypeVar("_T")
_END = object()


@contextlib.contextmanager
def read_ahead(items: Iterator[_T], enabled: bool = True) -> Iterator[Iterator[_T]]:
    """``items``, each produced on a background thread while the consumer works on the one before.

    A single worker runs ``next(items)`` one item ahead of the consumer, so producing (reading,
    decoding and normalising patches) overlaps with consuming (the network); the items, their
    order and everything computed from them are what iterating ``items`` directly gives. An
    exception raised while producing an item is raised again, the same object, where the
    consumer asks for that item (e.g. an :class:`~glmed.io.base.ImageFormatError` naming the
    file). Leaving the block, even through an exception, first waits for the worker, then closes
    ``items``: whatever they read from may be closed right after.

    Args:
        items: an iterator that is never used by two threads at once (a generator is fine).
        enabled: False yields ``items`` itself, produced in line.
    """
    if not enabled:
        try:
            yield items
        finally:
            close_iterator(items)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glmed-read-ahead")
    pending: Future[Any] = pool.submit(next, items, _END)

    def consume() -> Iterator[_T]:
        nonlocal pending
        while True:
            item = pending.result()
            if item is _END:
                return
            pending = pool.submit(next, items, _END)
            yield item

    try:
        yield consume()
    finally:
        pending.cancel()  # not started yet: never runs; running: waited for below
        pool.shutdown(wait=True)
        close_iterator(items)


def close_iterator(items: Iterator[Any]) -> None:
    """Close ``items`` when it can be closed (a generator), so what it reads from is released."""
    close = getattr(items, "close", None)
    if close is not None:
        close()


def to_channels_last(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Put ``model``'s 4-D weights in channels-last memory; returns those that were in the default layout.

    The parameters stay the same objects (only their data is replaced), so an optimiser holding
    them is unaffected and :func:`restore_layouts` can put them back.
    """
    contiguous = [parameter for parameter in model.parameters() if parameter.dim() == 4 and parameter.is_contiguous()]
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing from the stubs
    return contiguous


def restore_layouts(contiguous: list[torch.nn.Parameter]) -> None:
    """Give the tensors :func:`to_channels_last` listed their default layout back (same values)."""
    for tensor in contiguous:
        tensor.data = tensor.data.contiguous()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16/AMX."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_has_bf16()


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 convolutions (oneDNN's AVX512-BF16 or AMX kernels)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
