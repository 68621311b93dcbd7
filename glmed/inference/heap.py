"""Handing the C heap's free pages back to the OS while a slide streams.

A long slide run allocates and frees the same few hundred megabytes of activations once per
batch, between small long-lived pieces (the merger's open cells, the read-ahead batch). glibc's
``malloc`` keeps what is freed for reuse, and with the pieces in between it cannot reuse it
all, so the heap's resident size creeps up with the run's length: measured on a 5000×60000
slide (resnet18-FPN16, bidirectional, batch 4), the heap held 200–280 MB free between batches,
and peak anonymous memory rose from 660 MB on a 10k² slide to 880 MB on a 60k² one, all of it
at the same forward pass. ``malloc_trim(0)`` returns every free page of every arena to the OS
(glibc ≥ 2.8 also releases pages in the middle of the heap); called once a second from the
slide's release thread, it took that slide's lowest resident size between batches from 560 to
340 MB and its peak from 741/718 to 600/614 MB (two runs each). Its cost in time is not settled:
on that slide 145/147/169/161 s against 113/147/170/150 s without it (alternating runs), and a
60k² slide took 4159 s against 2966 s in an earlier run (docs/benchmarks.md); if it costs, a
longer period is the remedy.

Written by hand because no library does this: neither torch nor numpy exposes the allocator.
Trimming after every batch instead kept the peak at 520 MB but cost 20% more time (the next
batch faults every page in again); changing the allocator's thresholds (``mallopt``) would change
the whole process's behaviour, which a library should not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or None on one without it (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the C heap's free pages to the OS; True if any were released, False if none or unsupported.

    Safe from any thread at any time: glibc locks each arena while it trims it.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
