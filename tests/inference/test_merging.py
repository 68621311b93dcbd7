"""RowBandMerger: the same average as a full-size canvas, holding one band of rows."""

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
    ((30, 30), 64, 8, 2),
])
@pytest.mark.parametrize("strip", [2048, 37], ids=["one strip", "strips of 37 columns"])
def test_band_merging_equals_averaging_on_a_full_canvas(size, patch, overlap, classes, strip, monkeypatch):
    import glmed.inference.merging as merging

    monkeypatch.setattr(merging, "_WRITE_COLUMNS", strip)  # bands are written a strip of columns at a time
    grid = patch_grid(size, patch, overlap)
    ph, pw = grid.patch_size
    generator = torch.Generator().manual_seed(sum(size))
    # coarse values make exact ties common, so tie-breaking must agree as well
    probabilities = torch.randint(0, 4, (len(grid.boxes), classes, ph, pw), generator=generator).float() / 4
    out = np.full(size, 255, np.uint8)
    merger = RowBandMerger(out, classes, ph)
    for probs, box in zip(probabilities, grid.boxes.tolist()):
        merger.add(probs, box)
    assert merger.finish() is out
    np.testing.assert_array_equal(out, canvas_average(size, grid.boxes, probabilities, classes))


def test_patches_out_of_row_order_are_refused():
    merger = RowBandMerger(np.zeros((200, 100), np.uint8), 2, 64)
    merger.add(torch.ones(2, 64, 64), (100, 0, 164, 64))
    with pytest.raises(ValueError, match="row-major order"):
        merger.add(torch.ones(2, 64, 64), (0, 0, 64, 64))


MEMORY_PROBE = """
import resource, sys
import numpy as np, torch
from glmed.inference.merging import RowBandMerger
from glmed.geometry import patch_grid

height, width, patch, classes = 20_000, 2_000, 64, 2
out = np.full((height, width), 7, np.uint8)  # the caller's mask, touched before measuring
probabilities = torch.tensor([0.3, 0.7])[:, None, None].expand(classes, patch, patch)
RowBandMerger(np.zeros((patch, width), np.uint8), classes, patch).add(probabilities, (0, 0, patch, patch))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
merger = RowBandMerger(out, classes, patch)
for box in patch_grid((height, width), patch, 8).boxes.tolist():
    merger.add(probabilities, box)
merger.finish()
added_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(added_mb, int((out == 1).all()))
"""


def test_memory_grows_with_the_width_not_the_height():
    """A 20000×2000 mask: a full-size float canvas would add 480 MB; the merger a few rows."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, check=True)
    added_mb, every_pixel_written = done.stdout.split()
    assert float(added_mb) < 40
    assert every_pixel_written == "1"


@pytest.mark.parametrize("start_row", [1, 56, 57, 100, 149])
def test_a_resumed_merge_writes_the_same_rows_below_where_it_starts(start_row):
    size, classes = (150, 100), 3
    grid = patch_grid(size, 64, 8)
    probabilities = torch.rand(len(grid.boxes), classes, 64, 64, generator=torch.Generator().manual_seed(start_row))
    full = np.zeros(size, np.uint8)
    merger = RowBandMerger(full, classes, 64)
    for probs, box in zip(probabilities, grid.boxes.tolist()):
        merger.add(probs, box)
    merger.finish()
    resumed = np.full(size, 9, np.uint8)
    progress = []
    merger = RowBandMerger(resumed, classes, 64, start_row=start_row, on_rows_written=progress.append)
    for probs, box in zip(probabilities, grid.boxes.tolist()):
        if box[2] > start_row:  # what the inferer sends on resuming: patches reaching unfinished rows
            merger.add(probs, box)
    merger.finish()
    np.testing.assert_array_equal(resumed[start_row:], full[start_row:])
    assert (resumed[:start_row] == 9).all()  # rows written by the earlier run are not touched
    assert progress == sorted(progress) and progress[-1] == size[0]
