"""predict_to_tiff skips glass: patches without tissue are never read at full resolution, and written as background."""

from collections import Counter

import numpy as np
import pytest
import torch

from glmed.geometry import patch_grid
from glmed.inference.inferer import GlobalLocalInferer
from glmed.inference.slide import predict_to_tiff
from glmed.io import open_image
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.glnet import GLNet

SIZES = dict(fpn_channels=16, global_size=64, patch_size=64, overlap=8)
SIZE = (320, 448)


def read_mask(path):
    with open_image(path) as reader:
        return reader.read((0, 0, *reader.size))[..., 0] // 255


def says_foreground(model):
    """The untrained model made to answer foreground everywhere it looks, so background shows what was skipped."""
    with torch.no_grad():
        if model.sharing.value == "local_only":
            model.local_head.bias[1] += 10.0
        else:
            model.aggregate.bias[1] += 10.0
    return model


def covered_by(boxes, size=SIZE):
    covered = np.zeros(size, dtype=bool)
    for r0, c0, r1, c1 in boxes:
        covered[r0:r1, c0:c1] = True
    return covered


def patch_reads(reads):
    """How often each full-resolution patch box was read (level 0, patch-sized: not the tissue detector's view)."""
    return Counter(box for box, level in reads if level == 0 and (box[2] - box[0], box[3] - box[1]) == (64, 64))


@pytest.mark.parametrize("options", [{}, {"refine": "uncertain"}, {"tta": "flips"}], ids=["box", "uncertain", "tta"])
def test_tissue_mask_skips_background_patches(tmp_path, tissue_slide, monkeypatch, count_reads, options):
    """The issue's check: count the reads. Glass patches are never read at level 0 and are 0 in the mask."""
    model = says_foreground(GLNet(2, "resnet18", "bidirectional", **SIZES))
    grid = patch_grid(SIZE, (64, 64), 8)
    with open_image(tissue_slide.path) as reader:
        reads = count_reads(reader, monkeypatch)
        result = predict_to_tiff(model, reader, tmp_path / "mask.tif", batch_size=4, **options)
    glass = ~result.tissue.contains_tissue(grid.boxes)
    assert 10 < glass.sum() < len(grid) - 10  # a fair share of each
    read = patch_reads(reads)
    assert not set(read) & {tuple(box) for box in grid.boxes[glass].tolist()}  # not one glass patch read
    refined = set(read)
    assert result.patches == len(refined) and result.patches_glass == int(glass.sum())
    assert result.patches + result.patches_skipped + result.patches_glass == len(grid)
    collects = 3 if options.get("tta") == "flips" else 1  # bidirectional: collected once a view, then segmented
    assert set(read.values()) == {collects + 1}
    if "refine" not in options:
        assert refined == {tuple(box) for box in grid.boxes[~glass].tolist()} and result.patches_skipped == 0
    assert any(f"{glass.sum()} of {len(grid)} patches were glass only" in note for note in result.notes)
    mask = read_mask(result.path)
    only_glass = ~covered_by(grid.boxes[~glass].tolist())
    assert only_glass.sum() > 0.1 * mask.size and not mask[only_glass].any()
    if "refine" not in options:  # where the local branch ran alone, it said foreground
        assert mask[~covered_by(grid.boxes[glass].tolist())].all()
    # The same inferer over the same tissue mask, in memory, gives the same mask.
    in_memory = GlobalLocalInferer(batch_size=4, **options)(model, tissue_slide.path, tissue=result.tissue)
    np.testing.assert_array_equal(in_memory.mask, mask)
    assert (in_memory.patches, in_memory.patches_glass) == (result.patches, result.patches_glass)


def test_without_the_tissue_mask_every_patch_is_read(tmp_path, tissue_slide, monkeypatch, count_reads):
    model = says_foreground(GLNet(2, "resnet18", "local_only", **SIZES))
    grid = patch_grid(SIZE, (64, 64), 8)
    with open_image(tissue_slide.path) as reader:
        reads = count_reads(reader, monkeypatch)
        result = predict_to_tiff(model, reader, tmp_path / "mask.tif", batch_size=4, tissue=False)
    assert patch_reads(reads) == Counter({tuple(box): 1 for box in grid.boxes.tolist()})
    assert (result.patches, result.patches_glass, result.tissue) == (len(grid), 0, None)
    assert not any("glass" in note for note in result.notes)
    assert read_mask(result.path).all()  # glass segmented like the rest


def test_by_default_only_images_that_say_their_mpp_are_taken_for_slides(tmp_path, tissue_slide):
    """A colour photograph (no µm/px) is segmented whole, with a note; the same pixels as a slide skip glass."""
    model = says_foreground(GLNet(2, "resnet18", "local_only", **SIZES))
    with open_image(tissue_slide.path) as reader:
        pixels = reader.read((0, 0, *reader.size))
        slide = predict_to_tiff(model, reader, tmp_path / "slide.tif", batch_size=4)
    photograph = predict_to_tiff(model, pixels, tmp_path / "photograph.tif", batch_size=4)
    assert slide.tissue is not None and slide.patches_glass > 0
    assert photograph.tissue is None and photograph.patches_glass == 0 and read_mask(photograph.path).all()
    assert any("no tissue mask" in note and "tissue=True" in note for note in photograph.notes)
    forced = predict_to_tiff(model, pixels, tmp_path / "forced.tif", batch_size=4, tissue=True)
    assert forced.tissue is not None and forced.patches_glass > 0  # (µm² clean-up read at an assumed 0.25 µm/px)


def test_tissue_at_a_coarser_working_resolution_is_pooled_onto_it(tmp_path, tissue_slide):
    """With mpp= coarser than the tissue mask's pixels, the mask is pooled (tissue wherever any was), not refused."""
    model = says_foreground(GLNet(2, "resnet18", "local_only", **SIZES))
    result = predict_to_tiff(model, tissue_slide.path, tmp_path / "mask.tif", batch_size=4, mpp=8.0)
    assert result.tissue is not None and result.mask_size == (80, 112)
    assert result.patches + result.patches_glass >= 1


def test_a_tissue_skipped_run_resumes_and_another_tissue_setting_restarts(tmp_path, tissue_slide, monkeypatch,
                                                                        fail_at_call):
    model = GLNet(2, "resnet18", "local_only", **SIZES)
    path = tissue_slide.path
    whole = predict_to_tiff(model, path, tmp_path / "whole.tif", batch_size=3)
    assert 0 < whole.patches_glass and 15 < whole.patches
    for resumed_with in (True, False):
        with monkeypatch.context() as patched:
            fail_at_call(model, patched, whole.patches // 3 - 1)  # the last batches of tissue patches
            with pytest.raises(RuntimeError, match="device lost"):
                predict_to_tiff(model, path, tmp_path / "mask.tif", batch_size=3)
        result = predict_to_tiff(model, path, tmp_path / "mask.tif", batch_size=3, tissue=resumed_with)
        resumed = any("resumed" in note for note in result.notes)
        assert resumed == resumed_with
        if resumed_with:  # the same mask, computing only the tissue patches of the rows not yet written
            np.testing.assert_array_equal(read_mask(result.path), read_mask(whole.path))
            assert 0 < result.patches < whole.patches
            assert 0 < result.patches_glass <= whole.patches_glass
        else:  # every patch, from the start
            assert (result.patches, result.patches_glass) == (48, 0)


def test_coarse_to_fine_refines_boxes_on_tissue_only(tmp_path, tissue_slide, monkeypatch, count_reads):
    model = says_foreground(CoarseToFineGLNet(2, "resnet18", "g2l", **SIZES))

    def everything_is_foreground(global_maps, size):  # glass included: the box would be the whole slide
        logits = torch.zeros(1, 2, *size)
        logits[:, 1] = 5.0
        return logits

    monkeypatch.setattr(model, "global_logits", everything_is_foreground)
    whole = predict_to_tiff(model, tissue_slide.path, tmp_path / "whole.tif", tissue=False)
    assert whole.boxes == [(0, 0, *SIZE)]
    with open_image(tissue_slide.path) as reader:
        reads = count_reads(reader, monkeypatch)
        result = predict_to_tiff(model, reader, tmp_path / "mask.tif")
    tissue = result.tissue
    pieces = tissue.component_boxes(margin=16, min_size=(64, 64))
    assert result.boxes and all(any(p[0] <= b[0] and p[1] <= b[1] and b[2] <= p[2] and b[3] <= p[3] for p in pieces)
                                for b in result.boxes)
    in_boxes = covered_by(result.boxes)
    sr, sc = tissue.scale
    rows, cols = np.nonzero(tissue.mask)
    assert in_boxes[(rows * sr).astype(int), (cols * sc).astype(int)].all()  # no tissue left out
    assert in_boxes.mean() < 0.9
    mask = read_mask(result.path)
    assert not mask[~in_boxes].any()
    read = patch_reads(reads)
    assert len(read) == result.patches and set(read.values()) == {1}
    assert all(tissue.contains_tissue([box]).item() for box in read)  # no glass patch read inside the boxes either
