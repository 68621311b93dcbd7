"""Skipping glass with a tissue mask: boxes cut to tissue, glass answering background, in memory and in order."""

import numpy as np
import pytest
import torch

from glmed.inference.glass import background_answer, boxes_on_tissue, with_background
from glmed.inference.inferer import GlobalLocalInferer
from glmed.io.tissue import TissueMask
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.glnet import GLNet

SIZES = dict(fpn_channels=16, global_size=64, patch_size=64, overlap=8)
SIZE = (256, 384)


def two_pieces() -> TissueMask:
    """Tissue in two squares far apart on a 256 x 384 image (mask at a quarter of the resolution)."""
    mask = np.zeros((64, 96), bool)
    mask[8:20, 8:20] = True  # level-0 rows 32..80, columns 32..80
    mask[40:56, 70:90] = True  # level-0 rows 160..224, columns 280..360
    return TissueMask(mask, SIZE)


def test_a_box_over_two_pieces_is_cut_into_one_box_each():
    tissue = two_pieces()
    assert boxes_on_tissue([(0, 0, *SIZE)], tissue, (64, 64), margin=0) == [(24, 24, 88, 88), (160, 280, 224, 360)]
    assert boxes_on_tissue([(0, 0, *SIZE)], tissue, (64, 64), margin=8) == [(24, 24, 88, 88), (152, 272, 232, 368)]
    assert boxes_on_tissue([(100, 0, 150, 384)], tissue, (64, 64), margin=0) == []  # glass between them
    assert boxes_on_tissue([(200, 300, 256, 384)], tissue, (64, 64), margin=0) == [(180, 298, 244, 362)]  # grown


def test_glass_answers_background_in_grid_order():
    background = background_answer(3, (2, 2))
    assert background.shape == (3, 2, 2) and background[0].eq(1).all() and background[1:].eq(0).all()
    from_global = iter([torch.full((3, 2, 2), 0.5), torch.full((3, 2, 2), 0.25)])
    answers = list(with_background(np.array([True, False, True, False]), from_global, background))
    assert [float(a[1, 0, 0]) for a in answers] == [0.0, 0.5, 0.0, 0.25]


def _foreground_everywhere(model):
    with torch.no_grad():
        model.aggregate.bias[1] += 10.0
    return model


def test_glass_patches_answer_background_whatever_the_model_says():
    model = _foreground_everywhere(GLNet(2, "resnet18", "g2l", **SIZES))
    image = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    tissue = two_pieces()
    everywhere = GlobalLocalInferer(batch_size=4)(model, image)
    skipped = GlobalLocalInferer(batch_size=4)(model, image, tissue=tissue)
    assert everywhere.mask.all() and everywhere.patches_glass == 0
    assert 0 < skipped.patches < everywhere.patches and skipped.patches_skipped == 0
    assert skipped.patches + skipped.patches_glass == everywhere.patches
    assert skipped.mask[32:80, 32:80].all() and skipped.mask[160:224, 280:360].all()  # tissue: the model's answer
    assert not skipped.mask[:, 150:250].any() and 0.1 < skipped.mask.mean() < 0.5
    assert f"{skipped.patches_glass} skipped as glass" in repr(skipped)  # its one-line summary says so


def test_coarse_to_fine_gets_one_box_per_piece_of_tissue(monkeypatch):
    model = _foreground_everywhere(CoarseToFineGLNet(2, "resnet18", "g2l", **SIZES))

    def foreground(global_maps, size):  # the global branch calls everything foreground, glass included
        logits = torch.zeros(1, 2, *size)
        logits[:, 1] = 5.0
        return logits

    monkeypatch.setattr(model, "global_logits", foreground)
    image = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    assert GlobalLocalInferer()(model, image).boxes == [(0, 0, *SIZE)]
    result = GlobalLocalInferer()(model, image, tissue=two_pieces())
    pieces = [(32, 32, 80, 80), (160, 280, 224, 360)]
    assert len(result.boxes) == 2
    for box, piece in zip(result.boxes, pieces):  # each piece, with at most 16 pixels (a quarter patch) around
        assert all(box[i] >= piece[i] - 16 and box[i + 2] <= piece[i + 2] + 16 for i in (0, 1))
        assert box[0] <= piece[0] and box[1] <= piece[1] and box[2] >= piece[2] and box[3] >= piece[3]
    outside = np.ones(SIZE, bool)
    for r0, c0, r1, c1 in result.boxes:
        outside[r0:r1, c0:c1] = False
    assert not result.mask[outside].any() and result.mask[32:80, 32:80].all()


def test_coarse_to_fine_foreground_on_glass_alone_refines_nothing(monkeypatch):
    model = CoarseToFineGLNet(2, "resnet18", "g2l", **SIZES)

    def foreground_between(global_maps, size):  # foreground on the glass between the pieces only
        logits = torch.zeros(1, 2, *size)
        logits[:, 1, :, 26:40] = 5.0
        return logits

    monkeypatch.setattr(model, "global_logits", foreground_between)
    model.local_features = lambda *args, **kwargs: pytest.fail("a patch was refined")
    image = np.zeros((*SIZE, 3), np.uint8)
    result = GlobalLocalInferer()(model, image, tissue=two_pieces())
    assert result.boxes == [] and not result.mask.any() and result.coarse.any()
    assert any("no foreground on the tissue" in note for note in result.notes)


def test_a_tissue_mask_of_another_size_is_refused():
    model = GLNet(2, "resnet18", "local_only", **SIZES)
    with pytest.raises(ValueError, match=r"tissue mask is for an image of size \(256, 384\), but"):
        GlobalLocalInferer()(model, np.zeros((128, 128, 3), np.uint8), tissue=two_pieces())
