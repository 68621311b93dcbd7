import numpy as np
import pytest
import torch
import torch.nn.functional as F

import glmed
from glmed.geometry import coarse_to_fine_boxes
from glmed.io.base import ArrayReader
from glmed.models.coarse_to_fine import CoarseToFineGLNet


class ScriptedCoarse(CoarseToFineGLNet):
    """A tiny coarse-to-fine model whose global branch 'sees' a given coarse mask and whose
    refinement says foreground everywhere: what lands outside the boxes is then visible."""

    def __init__(self, coarse_mask, sharing="g2l"):
        super().__init__(2, "resnet18", sharing, fpn_channels=16, global_size=64, patch_size=48, overlap=8)
        self.coarse_mask = torch.as_tensor(coarse_mask, dtype=torch.float32)
        with torch.no_grad():
            self.aggregate.weight.zero_()
            self.aggregate.bias.copy_(torch.tensor([-1.0, 1.0]))

    def global_logits(self, global_maps, size):
        m = F.interpolate(self.coarse_mask[None, None], size=tuple(size), mode="nearest")[0, 0]
        return (torch.stack([1 - m, m]) * 10 - 5)[None]


class CountingReader(ArrayReader):
    """Records every region decoded from the image (all reads, through any view, end here)."""

    def __init__(self, array):
        super().__init__(array)
        self.reads = []

    def _read_level(self, level, box):
        self.reads.append(tuple(int(v) for v in box))
        return super()._read_level(level, box)


def lesion_coarse_mask(size=64, top=20, left=30, side=8):
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top:top + side, left:left + side] = 1
    return mask


@pytest.mark.parametrize("sharing", ["g2l", "bidirectional"])
def test_only_the_relaxed_box_is_refined_and_everything_outside_is_background(sharing):
    image = np.random.default_rng(0).integers(0, 255, (320, 400, 3), dtype=np.uint8)
    model = ScriptedCoarse(lesion_coarse_mask(), sharing)
    reader = CountingReader(image)
    result = glmed.predict(model, reader, batch_size=4)
    expected = coarse_to_fine_boxes(lesion_coarse_mask(), (320, 400), 1.0, (48, 48))
    assert result.boxes == expected and len(expected) == 1
    (r0, c0, r1, c1) = expected[0]
    assert (result.mask[r0:r1, c0:c1] == 1).all()
    outside = np.ones_like(result.mask, dtype=bool)
    outside[r0:r1, c0:c1] = False
    assert (result.mask[outside] == 0).all()
    assert result.coarse.shape == (320, 400) and result.coarse.max() == 1
    # every patch read lies inside the box, and no more patches were read than the box needs
    patch_reads = [b for b in reader.reads if (b[2] - b[0], b[3] - b[1]) == (48, 48)]
    assert patch_reads and all(r0 <= b[0] and c0 <= b[1] and b[2] <= r1 and b[3] <= c1 for b in patch_reads)
    passes = 2 if sharing == "bidirectional" else 1
    assert len(patch_reads) == passes * result.patches
    whole_image_patches = len(glmed.geometry.patch_grid((320, 400), 48, 8))
    assert result.patches < whole_image_patches / 4


def test_no_foreground_returns_the_coarse_background_and_says_so():
    model = ScriptedCoarse(np.zeros((64, 64), dtype=np.uint8))
    result = glmed.predict(model, np.zeros((200, 150, 3), dtype=np.uint8))
    assert result.boxes == [] and result.patches == 0
    assert (result.mask == 0).all() and (result.coarse == 0).all()
    assert any("no foreground" in note for note in result.notes)


def test_two_lesions_per_component_give_two_boxes():
    coarse = lesion_coarse_mask(top=5, left=5, side=4)
    coarse[50:56, 50:58] = 1
    model = ScriptedCoarse(coarse)
    model.config = glmed.models.coarse_to_fine.CoarseToFineConfig(**{**model.config.to_dict(), "per_component": True})
    result = glmed.predict(model, np.zeros((640, 640, 3), dtype=np.uint8))
    assert len(result.boxes) == 2
    for r0, c0, r1, c1 in result.boxes:
        assert (result.mask[r0:r1, c0:c1] == 1).all()
    assert result.mask.sum() == sum((b[2] - b[0]) * (b[3] - b[1]) for b in result.boxes)


def test_filling_outside_the_boxes_leaves_the_boxes_alone():
    from glmed.inference.merging import fill_outside

    out = np.full((300, 200), 7, np.uint8)
    boxes = [(10, 20, 120, 90), (100, 120, 290, 180), (200, 0, 250, 100)]
    fill_outside(out, boxes, 0, rows_per_chunk=64)
    inside = np.zeros(out.shape, bool)
    for r0, c0, r1, c1 in boxes:
        inside[r0:r1, c0:c1] = True
    assert (out[inside] == 7).all() and (out[~inside] == 0).all()


def test_the_box_rule_is_a_prediction_setting_and_the_model_keeps_its_own():
    coarse = lesion_coarse_mask(top=5, left=5, side=4)
    coarse[50:56, 50:58] = 1
    model = ScriptedCoarse(coarse)
    trained_with = model.config
    image = np.zeros((640, 640, 3), dtype=np.uint8)
    assert len(glmed.predict(model, image).boxes) == 1
    split = glmed.predict(model, image, per_component=True)
    assert len(split.boxes) == 2
    assert model.config == trained_with
    one = ScriptedCoarse(lesion_coarse_mask())
    (r0, c0, r1, c1), = glmed.predict(one, image).boxes
    (l0, m0, l1, m1), = glmed.predict(one, image, target_ratio=0.25).boxes  # more background around it
    assert (l1 - l0) * (m1 - m0) > (r1 - r0) * (c1 - c0)
    assert model.config == trained_with  # what it was trained with, and what a checkpoint records


def test_prediction_settings_are_checked_before_any_work():
    model = ScriptedCoarse(lesion_coarse_mask())
    with pytest.raises(ValueError, match="target_ratio"):
        glmed.predict(model, "no/such/image.png", target_ratio=0)
    plain = glmed.GLNet(2, "resnet18", "g2l", fpn_channels=16, global_size=64, patch_size=48, overlap=8)
    with pytest.raises(ValueError, match="coarse-to-fine models only"):
        glmed.predict(plain, np.zeros((64, 64, 3), dtype=np.uint8), per_component=True)


def test_overlap_is_a_prediction_setting():
    plain = glmed.GLNet(2, "resnet18", "g2l", fpn_channels=16, global_size=64, patch_size=48, overlap=8)
    image = np.zeros((200, 200, 3), dtype=np.uint8)
    default, denser = glmed.predict(plain, image), glmed.predict(plain, image, overlap=40)
    assert default.patches == len(glmed.geometry.patch_grid((200, 200), 48, 8))
    assert denser.patches == len(glmed.geometry.patch_grid((200, 200), 48, 40)) > default.patches


def test_a_mask_cut_by_its_box_says_so():
    """The refinement says foreground everywhere, so the mask fills its box and runs into every side."""
    result = glmed.predict(ScriptedCoarse(lesion_coarse_mask()), np.zeros((320, 400, 3), dtype=np.uint8))
    (box,) = result.boxes
    note = next(note for note in result.notes if "runs into" in note)
    assert str(box) in note and all(side in note for side in ("top", "bottom", "left", "right"))
