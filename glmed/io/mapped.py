"""Keeping a memory-mapped array's pages out of the process's resident memory.

A slide's mask lives in a file mapped into memory (:class:`numpy.memmap`): 3.6 GB for
60k×60k. Every page the process reads or writes through the mapping counts in its resident
size until the kernel reclaims it, so a pass over the whole mask (a pyramid level, a pixel
count) would show gigabytes of "memory" that is only page cache. ``madvise(MADV_DONTNEED)``
on a shared file mapping unmaps the pages from the process and loses nothing (written pages
stay in the page cache and reach the file; the next access maps them again), so callers drop
what they touched after each band they read or write.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Iterator
from typing import Any

import numpy as np

SHARED_MODES = ("r", "r+", "w+")
""":class:`numpy.memmap` modes that map the file shared: dropping their pages loses nothing.

Mode ``"c"`` (copy-on-write) maps it private: dropping a changed page would throw the change
away and show the file's bytes again, so such a mapping is never released.
"""


def mapping_of(array: Any) -> mmap.mmap | None:
    """The shared ``mmap`` behind ``array`` (a :class:`numpy.memmap` or a view of one), or None.

    None for an array in memory, a copy-on-write memmap, or a bare ``mmap`` whose access mode
    cannot be told.
    """
    while isinstance(array, np.ndarray):
        mapping = getattr(array, "_mmap", None)
        if mapping is not None:
            return mapping if getattr(array, "mode", None) in SHARED_MODES else None
        array = array.base
    return None


def release_pages(array: Any) -> None:
    """Drop the pages of the file behind ``array`` from this process's resident set; nothing for memory.

    Only a shared mapping is released (:func:`mapping_of`). A no-op where the platform lacks
    ``MADV_DONTNEED`` or the mapping is already closed.
    """
    mapping = mapping_of(array)
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            mapping.madvise(mmap.MADV_DONTNEED)


def row_bands(array: Any, band_bytes: int, bytes_per_pixel: int | None = None, multiple: int = 1) -> Iterator[slice]:
    """Slices of ``array``'s rows of at most ``band_bytes`` each; a mapped array's pages are released after each.

    The one way glmed reads a whole mask that may be memory-mapped: the caller uses each band
    before asking for the next, and the pages it touched leave the resident set then.

    Args:
        array: ``H×W`` (or ``H×W×C``) array, in memory or memory-mapped.
        band_bytes: the most bytes a band may take.
        bytes_per_pixel: what a pixel counts for: the array's own by default; more when the
            caller copies a band to a wider type (``np.bincount``'s int64).
        multiple: band heights are a multiple of this many rows (at least one such multiple).
    """
    pixel = bytes_per_pixel or array.itemsize * (array.shape[2] if array.ndim == 3 else 1)
    rows = max(multiple, band_bytes // max(1, array.shape[1] * pixel) // multiple * multiple)
    for start in range(0, array.shape[0], rows):
        yield slice(start, start + rows)
        release_pages(array)
