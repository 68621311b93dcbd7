"""Resuming a region part-way: which rows are written, and where the patch loop starts again.

:mod:`glmed.inference.slide` keeps a :class:`RowLedger` on disk beside its scratch mask; the
inferer asks it how far each region got and starts from :func:`resume_start`, so a resumed
run writes what one uninterrupted run would have written.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from glmed.conventions import Box


class RowLedger(Protocol):
    """Progress of a resumable run: how many rows of each region are already in the output.

    A region is the box of the image one GLNet pass covers: the whole image, or one
    coarse-to-fine box. :mod:`glmed.inference.slide` keeps one on disk beside its scratch mask.
    """

    def rows_done(self, region: Box) -> int:
        """Rows of ``region``, from its top, already written (0 for a region never started)."""

    def record(self, region: Box, rows: int) -> None:
        """``rows`` rows of ``region`` are now written."""


def resume_start(unfinished: np.ndarray, refined: np.ndarray, batch_size: int) -> int:
    """The grid index a resumed pass starts from, so every refined patch is batched as in a whole run.

    The local branch runs on the refined patches in batches of ``batch_size`` (counted over the
    refined ones only), and a batch's shape can change its results in the last bits; so the
    pass starts at the first unfinished patch, or earlier, at the start of the batch holding the
    first refined patch from there on. Patches above the rows already written add nothing.

    Args:
        unfinished: ``N`` booleans in grid order, True for a patch reaching rows not yet written.
        refined: ``N`` booleans, True for a patch the local branch runs on.
        batch_size: refined patches per forward pass.

    Returns:
        An index into the grid; ``N`` when every patch is finished.
    """
    waiting = np.flatnonzero(unfinished)
    first = int(waiting[0]) if waiting.size else len(unfinished)
    order = np.flatnonzero(refined)  # grid indices of the refined patches, in batching order
    position = int(np.searchsorted(order, first))  # the first refined patch at or after `first`
    if position == len(order):
        return first
    return min(first, int(order[position - position % batch_size]))
