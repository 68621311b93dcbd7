"""A folder run's ``summary.csv``: one line per slide (or image), finished, kept, failed or not yet done.

Columns (:data:`COLUMNS`): ``slide`` (the input's file name), ``mask`` (the output's), ``height``,
``width`` (level-0 pixels), ``mpp`` (µm per level-0 pixel, mean of the axes; blank when the file
does not say), ``tissue_area_px``/``tissue_area_um2`` (the tissue found on the slide; blank where
not detected), ``foreground_area_px``/``foreground_area_um2`` (the predicted non-background
area in level-0 pixels, counted on the mask and scaled where it was made at another µm/px
(``--mpp``); µm² blank without a µm/px), ``patches`` (full-resolution patches the local branch ran
on), ``patches_glass`` (patches without tissue, written as background unread; blank where no tissue
mask was used), ``seconds`` (this slide's wall time), ``status`` and ``error``. Sizes and µm/px are
always the slide's, whatever resolution it was segmented at:

- ``done``: segmented by this run;
- ``skipped``: finished earlier by the same checkpoint with the same options (its numbers are that
  run's, read from the record beside its mask);
- ``failed``: with the error, one line; the other slides went on;
- ``pending``: another process's share (``--part``, torchrun) that has not finished yet.

Every process of a split run rewrites the file (atomically) when it ends, from the records beside
the masks, so the last one to finish leaves every slide's line.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glmed.conventions import RUN_SUMMARY_NAME
from glmed.io.writers import atomic_path

SUMMARY_NAME = RUN_SUMMARY_NAME
"""The summary's file name in the output folder (the ISIC scorer skips it)."""

COLUMNS = ("slide", "mask", "height", "width", "mpp", "tissue_area_px", "tissue_area_um2", "foreground_area_px",
           "foreground_area_um2", "patches", "patches_glass", "seconds", "status", "error")

STATUSES = ("done", "skipped", "failed", "pending")


def result_row(image: Path, out: Path, result: Any, seconds: float) -> dict[str, Any]:
    """The line of a slide segmented by this run, from what ``predict``/``predict_to_tiff`` returned."""
    import numpy as np

    if hasattr(result, "class_pixels"):  # a SlidePrediction: counted while the mask was written
        height, width = result.size
        foreground, mpp = result.foreground_px, result.mpp
        tissue = getattr(result, "tissue", None)
    else:  # a SegmentationResult: the mask is in memory
        height, width = result.mask.shape[:2]
        foreground, mpp, tissue = int(np.count_nonzero(result.mask)), None, None
    pixel_um2 = None if mpp is None else mpp[0] * mpp[1]
    row = {"slide": image.name, "mask": out.name, "height": int(height), "width": int(width),
           "mpp": None if mpp is None else round((mpp[0] + mpp[1]) / 2, 6),
           "tissue_area_px": None if tissue is None else round(tissue.area_px),
           "tissue_area_um2": None if tissue is None or pixel_um2 is None else round(tissue.area_px * pixel_um2, 1),
           "foreground_area_px": int(foreground),
           "foreground_area_um2": None if pixel_um2 is None else round(foreground * pixel_um2, 1),
           "patches": int(result.patches),
           "patches_glass": None if tissue is None else int(getattr(result, "patches_glass", 0)),
           "seconds": round(seconds, 2), "status": "done", "error": None}
    return row


def failed_row(image: Path, out: Path, message: str, seconds: float) -> dict[str, Any]:
    """The line of a slide that failed, with its error."""
    return {"slide": image.name, "mask": out.name, "seconds": round(seconds, 2), "status": "failed",
            "error": message}


def pending_row(image: Path, out: Path) -> dict[str, Any]:
    """The line of a slide another process has not finished yet."""
    return {"slide": image.name, "mask": out.name, "status": "pending"}


def write_summary(folder: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` as ``folder/summary.csv`` (blank cells for missing values), atomically; returns its path."""
    path = folder / SUMMARY_NAME
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: "" if row.get(column) is None else row[column] for column in COLUMNS})
    return path
