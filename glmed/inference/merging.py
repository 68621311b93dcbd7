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

_UNCOVERED_PIXELS = 1 << 17
"""Pixels :class:`RowBandMerger` writes at once in a part no patch reached (which can be large)."""

UPSAMPLE_ROWS = 512
"""Rows :func:`upsample_to_labels` computes at once by default, on an image up to ``UPSAMPLE_BYTES`` a band."""

UPSAMPLE_BYTES = 64 << 20
"""The most bytes a default band of :func:`upsample_to_labels` holds: fewer rows on a wide slide."""


def upsample_rows(num_classes: int, width: int) -> int:
    """Rows :func:`upsample_to_labels` computes at once by default: 512, or fewer so a band stays under 64 MB.

    At 512 rows a band of a 60,000-pixel-wide slide would hold 860 MB with two classes.
    """
    return max(1, min(UPSAMPLE_ROWS, UPSAMPLE_BYTES // upsample_band_bytes(num_classes, 1, width)))


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
    logits: torch.Tensor, size: Size, rows_per_chunk: int | None = None, out: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Bilinearly upsample ``K×h×w`` scores to ``size`` and take the arg-max, a band of rows at a time.

    Equal to ``F.interpolate(..., mode="bilinear", align_corners=False).argmax(0)`` but
    the full-size ``K×H×W`` scores never exist at once: memory is one band of rows.

    Args:
        logits: ``K×h×w`` class scores (any float type; they are compared in float32).
        size: ``(height, width)`` of the mask, ``H×W``.
        rows_per_chunk: output rows computed at once; bounds memory at ``K×rows_per_chunk×W``
            (:func:`upsample_rows` by default).
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
    if rows_per_chunk is None:
        rows_per_chunk = upsample_rows(scores.shape[1], width)
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
    """Averages overlapping patch probabilities and writes their arg-max into ``out`` as soon as each part is final.

    The merger is told up front which patches will come and in what order (``boxes``, e.g.
    :func:`glmed.geometry.patch_grid`'s row-major grid). It cuts the image at every patch
    edge into cells: every pixel of a cell is covered by the same patches, so a cell is final
    once the last of them has been added, and is then averaged, written to ``out`` and
    dropped. Written by hand (MONAI's ``AvgMerger`` holds a full-size canvas, and a slide's
    does not fit in memory) and kept equal to it: each pixel's sums are added in the same order.

    What it holds: the cells some patch has reached and some later patch will still reach. On
    a row-major grid that is the overlap between the current grid row and the next one, across
    the width (``overlap`` rows, not a patch's height), plus the current patch's neighbourhood;
    :meth:`peak_bytes` gives the exact figure for a list of patches. A band of
    ``overlap`` rows 60,000 pixels wide with two classes is 24 MB.

    Args:
        out: the ``H×W`` mask to fill (class indices); may be a view or a memory-mapped file.
        num_classes: probabilities per pixel.
        boxes: ``N×4`` ``(row0, col0, row1, col1)`` of the patches, in the order :meth:`add`
            will receive them.
        start_row: rows above it are already written (a resumed run) and are left alone; the
            patches reaching below it are added whole, so the remaining rows get exactly the
            sums a full run gives.
        on_rows_written: called with the number of rows of ``out`` finished from the top, each
            time that number grows.
        probabilities: an ``H×W`` uint8 array to write the averaged probabilities into too
            (:func:`confidence_bytes`), or None.
    Pixels no patch covers get class 0.
    """

    def __init__(
        self,
        out: np.ndarray,
        num_classes: int,
        boxes: np.ndarray | list,
        start_row: int = 0,
        on_rows_written: Callable[[int], None] | None = None,
        probabilities: np.ndarray | None = None,
    ) -> None:
        self.out = out
        self.probabilities = probabilities
        self.num_classes = num_classes
        self._cells = _CellLayout(np.asarray(boxes, dtype=np.int64).reshape(-1, 4), out.shape[:2], start_row)
        self._open: dict[tuple[int, int], list] = {}  # (row cell, column cell) -> [sums, patches added]
        self._next = 0
        self._on_rows_written = on_rows_written
        layout = self._cells
        self._left = (layout.last >= 0).sum(axis=1) * layout.below_start  # cells each row of cells still awaits
        self._rows_done = 0  # rows of cells finished from the top
        for a, b in np.argwhere((layout.last < 0) & layout.below_start[:, None]):
            self._write(int(a), int(b), None, 0)  # never covered: class 0
        self._report()

    @staticmethod
    def peak_bytes(num_classes: int, boxes: np.ndarray | list, size: Size) -> int:
        """The most bytes the merger holds at once for these patches, in this order: its float32 sums.

        What :func:`glmed.inference.memory_budget.plan_for_budget` counts for it.
        """
        layout = _CellLayout(np.asarray(boxes, dtype=np.int64).reshape(-1, 4), size, 0)
        return 4 * num_classes * layout.peak_area()

    def add(self, probabilities: torch.Tensor, box: Box) -> None:
        """Add the next patch's ``K×h×w`` probabilities at ``box`` (row0, col0, row1, col1) of ``out``."""
        layout, index = self._cells, self._next
        if index >= len(layout.boxes) or tuple(int(v) for v in box) != tuple(layout.boxes[index].tolist()):
            expected = "no more patches" if index >= len(layout.boxes) else f"patch {layout.boxes[index].tolist()}"
            raise ValueError(f"patch {list(box)} arrived where the merger expected {expected}: add patches in the "
                             "order of the boxes it was given")
        self._next += 1
        r0, c0 = int(box[0]), int(box[1])
        rows, cols = layout.spans[index]
        for a in range(*rows):
            if not layout.below_start[a]:
                continue  # rows an earlier run wrote
            top, bottom = layout.row_cuts[a], layout.row_cuts[a + 1]
            for b in range(*cols):
                left, right = layout.col_cuts[b], layout.col_cuts[b + 1]
                part = probabilities[:, top - r0 : bottom - r0, left - c0 : right - c0]
                cell = self._open.get((a, b))
                if cell is None:
                    cell = self._open[(a, b)] = [part.float().clone(), 1]
                else:
                    cell[0] += part.float()
                    cell[1] += 1
                if layout.last[a, b] == index:
                    del self._open[(a, b)]
                    self._write(a, b, cell[0], cell[1])
                    self._left[a] -= 1
        self._report()

    def finish(self) -> np.ndarray:
        """Check that every patch came; returns ``out``, fully written."""
        if self._next != len(self._cells.boxes):
            raise ValueError(f"only {self._next} of the merger's {len(self._cells.boxes)} patches were added")
        return self.out

    def _write(self, a: int, b: int, sums: torch.Tensor | None, count: int) -> None:
        """Average one finished cell and write its arg-max (and confidence); ``sums`` None: nothing covered it."""
        layout = self._cells
        top, bottom = layout.row_cuts[a], layout.row_cuts[a + 1]
        left, right = layout.col_cuts[b], layout.col_cuts[b + 1]
        # An uncovered cell can be large (a region with no patches): written a strip of rows at a time.
        step = bottom - top if sums is not None else max(1, _UNCOVERED_PIXELS // max(1, right - left))
        for row in range(top, bottom, step):
            stop = min(row + step, bottom)
            averaged = (sums / count if sums is not None
                        else torch.zeros((self.num_classes, stop - row, right - left), dtype=torch.float32))
            self.out[row:stop, left:right] = averaged.argmax(0).numpy().astype(self.out.dtype)
            if self.probabilities is not None:
                self.probabilities[row:stop, left:right] = confidence_bytes(averaged)

    def _report(self) -> None:
        """Advance the rows finished from the top and tell ``on_rows_written`` when they grew."""
        layout, before = self._cells, self._rows_done
        while self._rows_done < len(self._left) and self._left[self._rows_done] == 0:
            self._rows_done += 1
        if self._on_rows_written is not None and self._rows_done != before:
            self._on_rows_written(int(layout.row_cuts[self._rows_done]))


class _CellLayout:
    """The cells that every patch edge cuts an ``H×W`` image into, and the last patch to reach each.

    Attributes:
        boxes: the patches, ``N×4``, in order.
        row_cuts, col_cuts: the cell edges (every patch edge, the image's edges and ``start_row``).
        spans: per patch, its ``(first, stop)`` row-cell and column-cell ranges.
        last: per cell, the index of the last patch reaching it, -1 for none.
        below_start: per row of cells, whether it lies at or below ``start_row``.
    """

    def __init__(self, boxes: np.ndarray, size: Size | tuple[int, ...], start_row: int) -> None:
        height, width = int(size[0]), int(size[1])
        boxes = np.clip(boxes, 0, [height, width, height, width])
        self.boxes = boxes
        self.row_cuts = np.unique(np.concatenate([[0, height, min(max(start_row, 0), height)], boxes[:, 0],
                                                  boxes[:, 2]])).tolist()
        self.col_cuts = np.unique(np.concatenate([[0, width], boxes[:, 1], boxes[:, 3]])).tolist()
        row_index = np.searchsorted(self.row_cuts, boxes[:, [0, 2]])
        col_index = np.searchsorted(self.col_cuts, boxes[:, [1, 3]])
        self.spans = [((int(r[0]), int(r[1])), (int(c[0]), int(c[1]))) for r, c in zip(row_index, col_index,
                                                                                         strict=True)]
        self.last = np.full((len(self.row_cuts) - 1, len(self.col_cuts) - 1), -1, dtype=np.int64)
        for index, ((a0, a1), (b0, b1)) in enumerate(self.spans):
            self.last[a0:a1, b0:b1] = index
        self.below_start = np.asarray(self.row_cuts[:-1]) >= start_row

    def peak_area(self) -> int:
        """The most pixels held at once: cells reached by some patch added and some patch still to come."""
        heights, widths = np.diff(self.row_cuts), np.diff(self.col_cuts)
        opened = np.zeros(self.last.shape, dtype=bool)
        held = peak = 0
        for index, ((a0, a1), (b0, b1)) in enumerate(self.spans):
            new = ~opened[a0:a1, b0:b1]
            held += int((heights[a0:a1, None] * widths[None, b0:b1])[new].sum())
            opened[a0:a1, b0:b1] = True
            peak = max(peak, held)
            done = self.last[a0:a1, b0:b1] == index
            held -= int((heights[a0:a1, None] * widths[None, b0:b1])[done].sum())
        return peak


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
