"""Turning low-resolution or per-patch network outputs into full-resolution label masks.

Neither ever holds a full-resolution float tensor: both write class indices into an ``H×W``
array the caller provides, a band of rows at a time, so that array may be a
:class:`numpy.memmap` on disk for a whole slide larger than memory. Both can also write, in the
same bands, how sure the answer is (:func:`confidence_bytes`) into a second ``H×W`` uint8 array.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from glmed.conventions import Box, Size

_WRITE_COLUMNS = 2048
"""Columns :class:`RowBandMerger` finishes at once when it writes a band of rows."""

UPSAMPLE_ROWS = 512
"""Rows :func:`upsample_to_labels` computes at once by default."""


def label_dtype(num_classes: int) -> np.dtype:
    """The type of a class-index mask: uint8, or int32 beyond 256 classes."""
    return np.dtype(np.uint8 if num_classes <= 256 else np.int32)


def confidence_bytes(probabilities: torch.Tensor) -> np.ndarray:
    """``K×h×w`` probabilities as one ``h×w`` uint8 map, 0 to 255 for 0 to 1.

    Two classes: the foreground's (class 1) probability, what a heat map of a lesion or tumour
    shows. More: the winning class's, how sure the mask is of each pixel. Pixels with no
    probability at all (all zero) give 0.
    """
    chosen = probabilities[1] if probabilities.shape[0] == 2 else probabilities.max(dim=0).values
    return (chosen.float() * 255).round_().clamp_(0, 255).to(torch.uint8).numpy()


def upsample_to_labels(
    logits: torch.Tensor, size: Size, rows_per_chunk: int = UPSAMPLE_ROWS, out: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Bilinearly upsample ``K×h×w`` scores to ``size`` and take the arg-max, a band of rows at a time.

    Equal to ``F.interpolate(..., mode="bilinear", align_corners=False).argmax(0)`` but
    the full-size ``K×H×W`` scores never exist at once: memory is one band of rows.

    Args:
        logits: ``K×h×w`` class scores (any float type; they are compared in float32).
        size: ``(height, width)`` of the mask, ``H×W``.
        rows_per_chunk: output rows computed at once; bounds memory at ``K×rows_per_chunk×W``.
        out: an ``H×W`` array to write into (e.g. a memory-mapped file); a new one by default.
        probabilities: an ``H×W`` uint8 array to write the upsampled scores' softmax into too
            (:func:`confidence_bytes`), or None.

    Returns:
        ``out``, or a new ``H×W`` array of class indices (:func:`label_dtype`).
    """
    height, width = int(size[0]), int(size[1])
    scores = logits.detach().float()[None]
    if out is None:
        out = np.empty((height, width), dtype=label_dtype(scores.shape[1]))
    elif out.shape != (height, width):
        raise ValueError(f"out has shape {out.shape}, expected {(height, width)}")
    device = scores.device
    # Normalised sample positions of output pixel centres (align_corners=False convention).
    cols = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 - 1
    for start in range(0, height, rows_per_chunk):
        stop = min(start + rows_per_chunk, height)
        rows = (torch.arange(start, stop, device=device, dtype=torch.float32) + 0.5) / height * 2 - 1
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij")[::-1], dim=-1)[None]
        band = F.grid_sample(scores, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[start:stop] = band[0].argmax(0).cpu().numpy().astype(out.dtype)
        if probabilities is not None:
            probabilities[start:stop] = confidence_bytes(band[0].softmax(0).cpu())
    return out


def upsample_band_bytes(num_classes: int, rows: int, width: int) -> int:
    """Bytes :func:`upsample_to_labels` holds for one band of ``rows`` rows ``width`` wide.

    The sampling grid (two float32 per pixel), the upsampled float32 scores, their int64 arg-max
    and its copy as class indices: what :func:`glmed.inference.memory_budget.plan_for_budget`
    counts for the coarse mask; ``rows`` is the smaller of ``rows_per_chunk`` and the mask's height.
    """
    return (8 + 4 * num_classes + 8 + 4) * rows * width


class RowBandMerger:
    """Averages overlapping patch probabilities and writes their arg-max into ``out``, band by band.

    Patches must arrive in row-major grid order (non-decreasing top row), as
    :func:`glmed.geometry.patch_grid` lists them. Rows above the newest patch's top row can
    receive nothing more, so they are finished and written out; only the rows a patch can still
    reach are kept, as ``K × patch height × W`` float32 sums and int32 counts. The sums are added
    in the same order as MONAI's ``AvgMerger`` would add them, so the result is identical to
    averaging on a full-size canvas, while memory grows with the image's width only.

    Args:
        out: the ``H×W`` mask to fill (class indices); may be a view or a memory-mapped file.
        num_classes: probabilities per pixel.
        patch_height: the tallest patch that will be added.
        start_row: rows above it are already written (a resumed run); patches reaching below it
            are still added whole, so the remaining rows get exactly the sums a full run gives.
        on_rows_written: called with the number of rows of ``out`` finished so far, after each band.
        probabilities: an ``H×W`` uint8 array to write the averaged probabilities into too
            (:func:`confidence_bytes`), band by band with ``out``, or None.
    """

    def __init__(
        self,
        out: np.ndarray,
        num_classes: int,
        patch_height: int,
        start_row: int = 0,
        on_rows_written: Callable[[int], None] | None = None,
        probabilities: np.ndarray | None = None,
    ) -> None:
        self.out = out
        self.probabilities = probabilities
        height, width = out.shape
        rows = min(patch_height, height)
        self._sums = torch.zeros((num_classes, rows, width), dtype=torch.float32)
        self._counts = torch.zeros((1, rows, width), dtype=torch.int32)
        self._top = start_row  # image row held in buffer row 0; rows above it are written
        self._last_row0 = 0
        self._on_rows_written = on_rows_written

    @staticmethod
    def buffer_bytes(num_classes: int, rows: int, width: int) -> int:
        """Bytes a merger holds for a band of ``rows`` rows ``width`` wide: float32 sums and int32 counts.

        What :func:`glmed.inference.memory_budget.plan_for_budget` counts for it; ``rows`` is the
        smaller of the patch height and the image's height, as the merger allocates.
        """
        return (num_classes * 4 + 4) * rows * width

    def add(self, probabilities: torch.Tensor, box: Box) -> None:
        """Add one patch's ``K×h×w`` probabilities at ``box`` (row0, col0, row1, col1) of ``out``."""
        r0, c0, r1, c1 = (int(v) for v in box)
        if r0 < self._last_row0:
            raise ValueError(f"patch at row {r0} arrived after one at row {self._last_row0}; "
                             "add patches in row-major order")
        self._last_row0 = r0
        self._write_rows_above(r0)
        if r1 - self._top > self._sums.shape[1]:
            raise ValueError(f"patch rows {r0}..{r1} exceed the merger's {self._sums.shape[1]}-row band")
        skip = max(self._top - r0, 0)  # rows already written before a resumed run
        if skip >= r1 - r0:
            return
        rows = slice(r0 + skip - self._top, r1 - self._top)
        self._sums[:, rows, c0:c1] += probabilities[:, skip:].float()
        self._counts[:, rows, c0:c1] += 1

    def finish(self) -> np.ndarray:
        """Write the remaining rows; returns ``out``."""
        self._write_rows_above(self.out.shape[0])
        return self.out

    def _write_rows_above(self, row: int) -> None:
        """Write the arg-max of rows ``[top, row)``; pixels no patch covered get class 0."""
        capacity = self._sums.shape[1]
        while self._top < min(row, self.out.shape[0]):
            band = min(row, self.out.shape[0]) - self._top
            band = min(band, capacity)
            # A strip of columns at a time, so the temporaries (the averages, their int64 arg-max, the
            # shifted sums) stay a strip's worth however wide the image: on a 60k-pixel-wide slide a
            # whole band's would be several hundred MB.
            for c0 in range(0, self._sums.shape[2], _WRITE_COLUMNS):
                c1 = c0 + _WRITE_COLUMNS
                averaged = self._sums[:, :band, c0:c1] / self._counts[:, :band, c0:c1].clamp(min=1)
                self.out[self._top : self._top + band, c0:c1] = averaged.argmax(0).numpy().astype(self.out.dtype)
                if self.probabilities is not None:
                    self.probabilities[self._top : self._top + band, c0:c1] = confidence_bytes(averaged)
                del averaged
                for buffer in (self._sums, self._counts):  # move the rows still open up by `band`, zero the rest
                    buffer[:, : capacity - band, c0:c1] = buffer[:, band:, c0:c1].clone()
                    buffer[:, capacity - band :, c0:c1] = 0
            self._top += band
            if self._on_rows_written is not None:
                self._on_rows_written(self._top)


def fill_outside(out: np.ndarray, boxes: list[Box], value: int, rows_per_chunk: int = 1024) -> None:
    """Set every pixel of ``out`` outside ``boxes`` (which do not overlap) to ``value``.

    A band of rows at a time (``out`` may be on disk); pixels inside the boxes are left as they are.
    """
    height = out.shape[0]
    cuts = sorted({0, height, *range(0, height, rows_per_chunk), *(b[0] for b in boxes), *(b[2] for b in boxes)})
    for top, bottom in zip(cuts[:-1], cuts[1:], strict=True):
        column = 0
        for c0, c1 in sorted((b[1], b[3]) for b in boxes if b[0] <= top and bottom <= b[2]):
            out[top:bottom, column:c0] = value
            column = c1
        out[top:bottom, column:] = value
