"""Coarse-to-fine boxes that grow where the refined mask runs into them, and specks that get no box."""

import json

import numpy as np
import pytest
import torch

import glmed
from glmed.geometry import coarse_to_fine_boxes, drop_specks
from glmed.inference import inferer as inferer_module
from glmed.inference.box_growth import grow_boxes, grown_box
from tests.inference.test_inferer_coarse_to_fine import ScriptedCoarse, lesion_coarse_mask

SIZE = (320, 400)
LESION = (100, 100, 220, 260)  # rows 100-220, cols 100-260 of the image


def lesion_image(box=LESION, size=SIZE):
    image = np.zeros((*size, 3), dtype=np.uint8)
    r0, c0, r1, c1 = box
    image[r0:r1, c0:c1] = 255
    return image


def coarse_of(box, size=SIZE, grid=64):
    """The coarse mask (on the global branch's grid) of an image box."""
    mask = np.zeros((grid, grid), dtype=np.uint8)
    r0, c0, r1, c1 = box
    mask[r0 * grid // size[0] : r1 * grid // size[0], c0 * grid // size[1] : c1 * grid // size[1]] = 1
    return mask


@pytest.fixture
def faithful_refinement(monkeypatch):
    """The local passes segment what they see: foreground wherever the patch is bright."""

    def local_probabilities(self, model, patches, host_boxes, global_maps, placement, patch_size, encoded=None):
        bright = (patches.mean(dim=1) > 0).float()
        return torch.stack([1 - bright, bright], dim=1)

    monkeypatch.setattr(inferer_module.GlobalLocalInferer, "_local_probabilities", local_probabilities)


def lesion_pixels(mask, box=LESION):
    r0, c0, r1, c1 = box
    return int(mask[r0:r1, c0:c1].sum()), (r1 - r0) * (c1 - c0)


def test_a_box_that_cuts_the_lesion_grows_until_the_lesion_is_whole(faithful_refinement):
    # the coarse pass saw only the left 40% of the lesion, so its box ends inside the lesion
    model = ScriptedCoarse(coarse_of((100, 100, 220, 164)))
    image = lesion_image()
    cut = glmed.predict(model, image)
    (box,) = cut.boxes
    assert box[3] < LESION[3]
    found, total = lesion_pixels(cut.mask)
    assert found < total
    assert any("runs into" in note and "right" in note for note in cut.notes)

    grown = glmed.predict(model, image, grow_boxes=2)
    (after,) = grown.boxes
    assert after[0] <= box[0] and after[1] <= box[1] and after[3] > LESION[3] and after[2] >= box[2]
    np.testing.assert_array_equal(grown.mask, image[..., 0] // 255)  # every lesion pixel, nothing else
    assert not any("runs into" in note for note in grown.notes)
    assert any("grew it to" in note and "right" in note for note in grown.notes)
    assert grown.patches > cut.patches
    assert model.config.grow_boxes == 0  # a prediction setting: the model keeps its own


def test_growth_stops_at_the_image_border(faithful_refinement):
    lesion = (100, 250, 220, 400)  # runs to the image's right border
    model = ScriptedCoarse(coarse_of((100, 250, 220, 300)))
    result = glmed.predict(model, lesion_image(lesion), grow_boxes=5)
    (box,) = result.boxes
    assert box[3] == SIZE[1]
    np.testing.assert_array_equal(result.mask, lesion_image(lesion)[..., 0] // 255)
    assert not any("runs into" in note for note in result.notes)


def test_growth_stops_at_its_limit_and_says_the_mask_is_still_cut():
    """Refinement says foreground everywhere, so every side is cut each round."""
    model = ScriptedCoarse(lesion_coarse_mask())
    image = np.zeros((*SIZE, 3), dtype=np.uint8)
    (start,) = glmed.predict(model, image).boxes
    one = glmed.predict(model, image, grow_boxes=1)
    expected = grown_box(start, ["top", "bottom", "left", "right"], SIZE, (48, 48))
    assert one.boxes == [expected]
    assert sum("grew it to" in note for note in one.notes) == 1
    assert any("runs into" in note and "grow_boxes limit" in note for note in one.notes)
    whole = glmed.predict(model, image, grow_boxes=10)
    assert whole.boxes == [(0, 0, *SIZE)]  # the border stops it long before 10 rounds
    assert sum("grew it to" in note for note in whole.notes) < 10
    assert not any("runs into" in note for note in whole.notes)


def test_grown_boxes_that_meet_are_merged_and_refined_once():
    calls = []
    mask = np.zeros((200, 200), dtype=np.uint8)
    mask[30:50, 40:60] = 1  # runs into the right side of the first box only
    boxes = [(20, 20, 60, 60), (20, 100, 60, 140)]

    def refine(box):
        calls.append(box)
        return 1, 0

    growth = grow_boxes(mask, boxes, (200, 200), 3, refine, (48, 48))
    assert growth.boxes == [(20, 20, 60, 140)] and calls == [(20, 20, 60, 140)]
    assert growth.rounds == 1 and growth.patches == 1  # the merged box's sides are background: it stops


def test_a_remembered_decision_is_taken_instead_of_reading_the_mask():
    class Ledger:
        def __init__(self):
            self.kept = {}

        def recall(self, key):
            return self.kept.get(key)

        def remember(self, key, value):
            self.kept[key] = value

    mask = np.ones((200, 200), dtype=np.uint8)
    ledger = Ledger()
    first = grow_boxes(mask, [(50, 50, 100, 100)], (200, 200), 1, lambda box: (0, 0), (10, 10), ledger)
    assert ledger.kept and first.boxes != [(50, 50, 100, 100)]
    again = grow_boxes(np.zeros_like(mask), [(50, 50, 100, 100)], (200, 200), 1, lambda box: (0, 0), (10, 10), ledger)
    assert again.boxes == first.boxes and again.grown == first.grown


def test_specks_below_min_component_get_no_box():
    coarse = lesion_coarse_mask(top=20, left=20, side=10)
    coarse[50, 50] = 1  # one grid pixel: a speck of (640/64)² = 100 image pixels
    size = (640, 640)
    assert len(coarse_to_fine_boxes(coarse, size, per_component=True)) == 2
    assert len(coarse_to_fine_boxes(coarse, size, per_component=True, min_component=101)) == 1
    assert len(coarse_to_fine_boxes(coarse, size, per_component=True, min_component=100)) == 2
    # as a fraction of the image: 100 px of 640² is 0.024%
    assert len(coarse_to_fine_boxes(coarse, size, per_component=True, min_component=0.001)) == 1
    one_box = coarse_to_fine_boxes(coarse, size, min_component=0.001)  # a far speck no longer stretches the box
    assert one_box == coarse_to_fine_boxes(lesion_coarse_mask(top=20, left=20, side=10), size)
    assert not drop_specks(coarse, size, 0.5).any()  # the lesion (10 000 px) is under half the image


def test_only_specks_refine_nothing_and_say_why():
    coarse = np.zeros((64, 64), dtype=np.uint8)
    coarse[10, 10] = 1
    model = ScriptedCoarse(coarse)
    result = glmed.predict(model, np.zeros((*SIZE, 3), dtype=np.uint8), per_component=True, min_component=0.01)
    assert result.boxes == [] and result.patches == 0
    assert any("specks smaller than min_component" in note for note in result.notes)


@pytest.mark.parametrize("bad, message", [(dict(grow_boxes=-1), "grow_boxes"), (dict(grow_boxes=1.5), "grow_boxes"),
                                          (dict(min_component=-1), "min_component")])
def test_bad_growth_settings_are_refused_before_any_work(bad, message):
    with pytest.raises(ValueError, match=message):
        glmed.predict(ScriptedCoarse(lesion_coarse_mask()), "no/such/image.png", **bad)


def test_a_slide_run_stopped_while_a_grown_box_is_refined_resumes_to_the_same_mask(tmp_path, slide, monkeypatch,
                                                                                      fail_at_call):
    from glmed.inference.slide import predict_to_tiff
    from tests.inference.test_slide import read_mask

    torch.manual_seed(3)
    model = glmed.CoarseToFineGLNet(2, "resnet18", "g2l", fpn_channels=16, global_size=64, patch_size=64, overlap=8)
    with torch.no_grad():  # refinement says foreground everywhere: the box is cut on every side and grows
        model.aggregate.weight.zero_()
        model.aggregate.bias.copy_(torch.tensor([-1.0, 1.0]))

    def centre_is_foreground(global_maps, size):
        logits = torch.zeros(1, 2, *size)
        logits[:, 1, size[0] // 3 : size[0] // 2, size[1] // 3 : size[1] // 2] = 5.0
        return logits

    monkeypatch.setattr(model, "global_logits", centre_is_foreground)  # on glass too: no tissue mask, then
    first_box = predict_to_tiff(model, slide, tmp_path / "first.tif", batch_size=2, tissue=False)
    whole = predict_to_tiff(model, slide, tmp_path / "whole.tif", batch_size=2, tissue=False, grow_boxes=1)
    assert whole.boxes != first_box.boxes and any("grew it to" in note for note in whole.notes)
    grown_calls = -(-(whole.patches - first_box.patches) // 2)
    with monkeypatch.context() as patched:
        fail_at_call(model, patched, -(-first_box.patches // 2) + grown_calls)  # the grown box's last batch
        with pytest.raises(RuntimeError):
            predict_to_tiff(model, slide, tmp_path / "mask.tif", batch_size=2, tissue=False, grow_boxes=1)
    ledger = json.loads((tmp_path / ".mask.tif.partial.json").read_text())
    assert "grow_boxes round 1" in ledger["decisions"]
    assert ledger["regions"][",".join(map(str, whole.boxes[0]))] > 0  # rows of the grown box were written
    resumed = predict_to_tiff(model, slide, tmp_path / "mask.tif", batch_size=2, tissue=False, grow_boxes=1)
    np.testing.assert_array_equal(read_mask(resumed.path)[0], read_mask(whole.path)[0])
    assert resumed.boxes == whole.boxes and resumed.patches < whole.patches
