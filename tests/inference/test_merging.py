"""RowBandMerger: the same average as a full-size canvas, holding only the cells still open."""

import numpy as np
import pytest
import torch

from glmed.geometry import patch_grid
from glmed.inference.merging import RowBandMerger


def canvas_average(size, boxes, probabilities, num_classes):
    """The reference: MONAI's AvgMerger over the whole image, then the arg-max."""
    from monai.inferers import AvgMerger

    merger = AvgMerger(merged_shape=(1, num_classes, *size), device="cpu", count_dtype=torch.int32)
    for probs, (r0, c0, _, _) in zip(probabilities, boxes.tolist()):
        merger.aggregate(probs[None], (r0, c0))
    return merger.finalize()[0].argmax(0).numpy().astype(np.uint8)


@pytest.mark.parametrize("size, patch, overlap, classes", [
    ((150, 100), 64, 8, 2), ((509, 509), 64, 40, 3), ((64, 300), 64, 0, 2), ((1000, 50), 48, 47, 7),
    ((30, 30), 64, 8, 2), ((300, 200), 64, 50, 2),
])
def test_merging_equals_averaging_on_a_full_canvas(size, patch, overlap, classes):
    grid = patch_grid(size, patch, overlap)
    ph, pw = grid.patch_size
    generator = torch.Generator().manual_seed(sum(size))
    # coarse values make exact ties common, so tie-breaking must agree as well
    probabilities = torch.randint(0, 4, (len(grid.boxes), classes, ph, pw), generator=generator).float() / 4
    out = np.full(size, 255, np.uint8)
    confidence = np.full(size, 7, np.uint8)
    merger = RowBandMerger(out, classes, grid.boxes, probabilities=confidence)
    for probs, box in zip(probabilities, grid.boxes.tolist()):
        merger.add(probs, box)
    assert merger.finish() is out
    np.testing.assert_array_equal(out, canvas_average(size, grid.boxes, probabilities, classes))
    assert (confidence != 7).all()  # every pixel's confidence written too


def test_patches_out_of_order_or_missing_are_refused():
    boxes = [(0, 0, 64, 64), (0, 36, 64, 100), (100, 0, 164, 64)]
    merger = RowBandMerger(np.zeros((200, 100), np.uint8), 2, boxes)
    with pytest.raises(ValueError, match="order of the boxes"):
        merger.add(torch.ones(2, 64, 64), (100, 0, 164, 64))
    merger.add(torch.ones(2, 64, 64), (0, 0, 64, 64))
    with pytest.raises(ValueError, match="only 1 of the merger's 3 patches"):
        merger.finish()


def test_pixels_no_patch_reaches_are_background():
    out = np.full((100, 100), 9, np.uint8)
    merger = RowBandMerger(out, 2, [(20, 20, 52, 52)])
    merger.add(torch.tensor([0.2, 0.8])[:, None, None].expand(2, 32, 32), (20, 20, 52, 52))
    merger.finish()
    assert (out[20:52, 20:52] == 1).all() and out.sum() == 32 * 32


def test_it_holds_the_overlap_rows_across_the_width_not_a_patch_height():
    """On a row-major grid the open cells are the overlap with the next grid row, plus the current patch's."""
    size, patch, overlap, classes = (600, 2000), 128, 16, 2
    grid = patch_grid(size, patch, overlap)
    merger = RowBandMerger(np.zeros(size, np.uint8), classes, grid.boxes)
    probabilities = torch.full((classes, patch, patch), 0.5)
    held = []
    for box in grid.boxes.tolist():
        merger.add(probabilities, box)
        held.append(sum(cell[0].numel() * 4 for cell in merger._open.values()))
    merger.finish()
    peak = RowBandMerger.peak_bytes(classes, grid.boxes, size)
    assert max(held) <= peak <= max(held) + 4 * classes * patch * patch  # peak_bytes also counts a patch mid-add
    # the largest overlap of two grid rows here is the last (clamped) one's: 600 = 4*112 + 128 - 24 more rows
    overlap_rows = max(int(a[0] + patch - b[0]) for a, b in zip(np.unique(grid.boxes[:, 0])[:-1, None],
                                                                  np.unique(grid.boxes[:, 0])[1:, None]))
    assert peak <= 4 * classes * (overlap_rows * size[1] + 2 * patch * patch)
    assert peak < 4 * classes * patch * size[1] / 2  # well under a patch-high band across the width


MEMORY_PROBE = """
import resource, sys
import numpy as np, torch
from glmed.inference.merging import RowBandMerger
from glmed.geometry import patch_grid

height, width, patch, classes = 2_000, 20_000, 256, 2
out = np.full((height, width), 7, np.uint8)  # the caller's mask, touched before measuring
probabilities = torch.tensor([0.3, 0.7])[:, None, None].expand(classes, patch, patch)
warm = np.zeros((patch, width), np.uint8)
RowBandMerger(warm, classes, [(0, 0, patch, patch)]).add(probabilities, (0, 0, patch, patch))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
boxes = patch_grid((height, width), patch, 8).boxes
merger = RowBandMerger(out, classes, boxes)
for box in boxes.tolist():
    merger.add(probabilities, box)
merger.finish()
added_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(added_mb, int((out == 1).all()))
"""


def test_memory_grows_with_the_overlap_not_the_patch_height():
    """A 2000×20000 mask, 256-pixel patches: a band of patch rows across the width would add 61 MB (the
    earlier merger's sums and counts), a full-size float canvas 480 MB; the merger's open cells under 2 MB."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, check=True)
    added_mb, every_pixel_written = done.stdout.split()
    assert float(added_mb) < 15
    assert every_pixel_written == "1"


@pytest.mark.parametrize("early", [0, 3])
@pytest.mark.parametrize("start_row", [1, 56, 57, 100, 149])
def test_a_resumed_merge_writes_the_same_rows_below_where_it_starts(start_row, early):
    size, classes = (150, 100), 3
    grid = patch_grid(size, 64, 8)
    probabilities = torch.rand(len(grid.boxes), classes, 64, 64, generator=torch.Generator().manual_seed(start_row))
    full = np.zeros(size, np.uint8)
    merger = RowBandMerger(full, classes, grid.boxes)
    for probs, box in zip(probabilities, grid.boxes.tolist()):
        merger.add(probs, box)
    merger.finish()
    resumed = np.full(size, 9, np.uint8)
    progress = []
    # What the inferer sends on resuming: the grid from the first patch reaching unfinished rows, or from
    # a few patches earlier (the start of its batch), which then include patches wholly above start_row.
    first = int(np.argmax(grid.boxes[:, 2] > start_row))
    sent = slice(max(0, first - early), None)
    merger = RowBandMerger(resumed, classes, grid.boxes[sent], start_row=start_row, on_rows_written=progress.append)
    for probs, box in zip(probabilities[sent], grid.boxes[sent].tolist()):
        merger.add(probs, box)
    merger.finish()
    np.testing.assert_array_equal(resumed[start_row:], full[start_row:])
    assert (resumed[:start_row] == 9).all()  # rows written by the earlier run are not touched
    assert progress == sorted(progress) and progress[-1] == size[0]


def test_the_coarse_mask_is_upsampled_in_bands_that_stay_small_on_a_wide_slide():
    from glmed.inference.merging import UPSAMPLE_BYTES, upsample_band_bytes, upsample_rows

    assert upsample_rows(2, 1536) == 512  # an ISIC image: 512 rows a band
    rows = upsample_rows(2, 60_000)  # a 60k-pixel-wide slide: fewer, under the cap
    assert 1 <= rows < 512 and upsample_band_bytes(2, rows, 60_000) <= UPSAMPLE_BYTES
    assert upsample_rows(2, 10**9) == 1
