import numpy as np
import pytest

from glmed.inference.finishing import finish_lesion_mask


def lesion(shape=(60, 80), value=1, dtype=np.uint8):
    """A 20×30 lesion (600 pixels) at rows 20-39, columns 30-59."""
    mask = np.zeros(shape, dtype=dtype)
    mask[20:40, 30:60] = value
    return mask


def test_specks_are_removed_and_the_largest_region_kept():
    mask = lesion()
    expected = mask.copy()
    mask[2, 2] = mask[50, 5] = 1  # two one-pixel specks
    mask[45:48, 70:73] = 1  # a 9-pixel speck
    before = mask.copy()
    out, notes = finish_lesion_mask(mask)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(mask, before)  # the input is left alone
    assert out.dtype == np.uint8
    (note,) = notes
    # 3 regions of 11 pixels out of 611
    assert note.startswith("removed 3 foreground regions besides the largest (1.8% of the foreground)")


def test_the_largest_region_wins_wherever_it_lies_and_keeps_its_value():
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[0:5, 0:5] = 255  # 25 pixels, first in reading order
    mask[20:30, 20:30] = 255  # 100 pixels
    out, notes = finish_lesion_mask(mask)
    assert out[25, 25] == 255 and not out[:5, :5].any() and np.count_nonzero(out) == 100
    assert "removed 1 foreground region besides" in notes[0] and "(20.0% of the foreground)" in notes[0]


def test_foreground_is_8_connected_unless_asked_otherwise():
    mask = lesion()
    mask[40, 60] = mask[41, 61] = 1  # a diagonal tail touching the lesion's corner
    out, notes = finish_lesion_mask(mask)
    np.testing.assert_array_equal(out, mask)
    assert notes == []
    out4, notes4 = finish_lesion_mask(mask, connectivity=4)
    np.testing.assert_array_equal(out4, lesion())
    assert "removed 2 foreground regions" in notes4[0]


def test_holes_are_filled_but_a_bay_open_to_the_border_is_not():
    mask = np.zeros((50, 50), dtype=np.uint8)
    mask[10:40, 0:30] = 1  # touches the left border
    mask[20:25, 10:15] = 0  # a 25-pixel hole
    mask[30:32, 20:22] = 0  # a 4-pixel hole
    mask[15:18, 0:8] = 0  # a bay open to the left border: not a hole
    out, notes = finish_lesion_mask(mask)
    assert out[20:25, 10:15].all() and out[30:32, 20:22].all()
    assert not out[15:18, 0:8].any()
    np.testing.assert_array_equal(out[mask != 0], 1)
    assert np.count_nonzero(out) == np.count_nonzero(mask) + 29
    (note,) = notes
    foreground = 900 - 25 - 4 - 24
    assert note.startswith(f"filled 2 holes, adding {100 * 29 / foreground:.1f}% to the foreground")


def test_a_diagonal_gap_in_a_ring_does_not_open_the_hole():
    mask = np.zeros((9, 9), dtype=np.uint8)
    mask[2:7, 2:7] = 1
    mask[3:6, 3:6] = 0  # a 3×3 hole
    mask[2, 2] = 0  # the ring's corner cut: its pixels still touch diagonally, so the hole stays closed
    out, notes = finish_lesion_mask(mask)
    assert out[3:6, 3:6].all() and not out[2, 2]
    assert notes[0].startswith("filled 1 hole,")
    # with a 4-connected foreground the ring is open at the cut corner and the hole is a bay
    mask[2, 3] = 0
    out4, notes4 = finish_lesion_mask(mask, connectivity=4)
    np.testing.assert_array_equal(out4, mask)
    assert notes4 == []


def test_holes_are_left_alone_without_fill_holes():
    mask = lesion()
    mask[25:30, 40:45] = 0
    mask[0, 0] = 1
    out, notes = finish_lesion_mask(mask, fill_holes=False)
    assert not out[25:30, 40:45].any() and not out[0, 0]
    assert len(notes) == 1 and notes[0].startswith("removed 1 foreground region")


def test_largest_is_judged_with_its_holes_filled():
    mask = np.zeros((60, 60), dtype=np.uint8)
    mask[5:35, 5:35] = 1
    mask[6:34, 6:34] = 0  # a one-pixel ring: 116 pixels, 900 with its hole
    mask[45:57, 45:57] = 1  # a solid square: 144 pixels
    out, notes = finish_lesion_mask(mask)
    assert out[5:35, 5:35].all() and not out[45:57, 45:57].any()
    assert notes[0].startswith("removed 1 foreground region besides the largest (55.4% of the foreground)")
    assert notes[1].startswith("filled 1 hole,")


def test_other_regions_above_the_threshold_are_kept():
    mask = lesion()  # 600 pixels
    mask[0:5, 0:10] = 1  # 50 pixels
    mask[50:53, 0:3] = 1  # 9 pixels
    mask[55, 75] = 1  # 1 pixel
    out, notes = finish_lesion_mask(mask, keep_other_regions_above=9)
    assert out[0:5, 0:10].all() and not out[50:53, 0:3].any() and not out[55, 75]
    assert notes[0].startswith("removed 2 foreground regions of at most 9 pixels each (1.5% of the foreground)")
    kept_all, notes_all = finish_lesion_mask(mask, keep_other_regions_above=0)
    np.testing.assert_array_equal(kept_all, mask)
    assert notes_all == []
    assert np.count_nonzero(finish_lesion_mask(mask, keep_other_regions_above=8)[0]) == 600 + 50 + 9


def test_a_finished_mask_is_returned_unchanged_without_notes():
    mask = lesion(value=True, dtype=bool)
    out, notes = finish_lesion_mask(mask)
    assert notes == [] and out.dtype == bool and out is not mask
    np.testing.assert_array_equal(out, mask)
    full = np.full((10, 10), 255, dtype=np.uint8)
    assert finish_lesion_mask(full)[1] == []


def test_an_empty_mask_is_returned_unchanged_without_a_note():
    mask = np.zeros((30, 40), dtype=np.uint8)
    out, notes = finish_lesion_mask(mask)
    assert notes == [] and out.dtype == np.uint8 and not out.any() and out is not mask


@pytest.mark.parametrize("values", [(1, 2), (255, 128), (0.5, 1.0)])
def test_multi_class_masks_and_probabilities_are_refused(values):
    mask = lesion(dtype=np.float32 if isinstance(values[0], float) else np.uint8)
    mask[20:30, 30:60] = values[0]
    mask[30:40, 30:60] = values[1]
    with pytest.raises(ValueError, match="binary mask.*multi-class"):
        finish_lesion_mask(mask)


def test_bad_shapes_and_settings_are_refused():
    with pytest.raises(ValueError, match="H×W"):
        finish_lesion_mask(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="connectivity"):
        finish_lesion_mask(lesion(), connectivity=6)
    with pytest.raises(ValueError, match="keep_other_regions_above"):
        finish_lesion_mask(lesion(), keep_other_regions_above=-1)


def test_more_regions_than_16_bits_hold_are_counted_exactly():
    mask = np.zeros((520, 520), dtype=np.uint8)
    mask[::2, ::2] = 1  # 260² = 67,600 isolated pixels, beyond a 16-bit label
    mask[0:9, 0:9] = 1  # one 81-pixel region among them
    out, notes = finish_lesion_mask(mask, fill_holes=False)
    assert np.count_nonzero(out) == 81 and out[0:9, 0:9].all()
    assert notes[0].startswith(f"removed {260 * 260 - 25} foreground regions besides the largest")


# --- as an option of predict -------------------------------------------------------------------------------------

def _tiny(sharing="global_only", classes=2, size=64):
    import torch

    from glmed.models.glnet import GLNet

    torch.manual_seed(0)
    return GLNet(classes, "resnet18", sharing, fpn_channels=8, global_size=size, patch_size=size, overlap=8).eval()


def _answering(model, monkeypatch, mask):
    """Make ``model``'s global branch answer ``mask`` (an image-sized 0/1 array, image = global size)."""
    import torch

    logits = torch.from_numpy(np.stack([1.0 - mask, mask.astype(np.float32)]).astype(np.float32))[None]
    monkeypatch.setattr(model, "global_logits", lambda maps, size: logits.clone())


def _speckled_lesion():
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 12:44] = 1
    mask[28:32, 26:30] = 0  # a hole
    mask[2:4, 58:61] = 1  # a speck
    return mask


def test_predict_finishes_the_lesion_mask_and_says_so(monkeypatch):
    import glmed

    model = _tiny()
    raw = _speckled_lesion()
    _answering(model, monkeypatch, raw)
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    plain = glmed.predict(model, pixels, global_only=True)
    np.testing.assert_array_equal(plain.mask, raw)  # the controlled answer comes through unfinished
    finished = glmed.predict(model, pixels, global_only=True, finish="lesion")
    expected, expected_notes = finish_lesion_mask(raw)
    np.testing.assert_array_equal(finished.mask, expected)
    assert not finished.mask[2:4, 58:61].any() and finished.mask[28:32, 26:30].all()
    assert [n for n in finished.notes if n.startswith("ISIC finishing")] == [
        f"ISIC finishing: {note}" for note in expected_notes]
    kept = glmed.predict(model, pixels, global_only=True, finish="lesion", keep_regions_above=5)
    assert kept.mask[2:4, 58:61].all() and kept.mask[28:32, 26:30].all()  # the 6-pixel speck stays


def test_finish_agrees_with_finishing_the_plain_prediction():
    import glmed

    model = _tiny("g2l")
    pixels = np.random.default_rng(3).integers(0, 256, (100, 90, 3), dtype=np.uint8)
    plain = glmed.predict(model, pixels)
    finished = glmed.predict(model, pixels, finish="lesion")
    assert (finished.mask != plain.mask).any()  # this untrained model's mask has holes to fill
    np.testing.assert_array_equal(finished.mask, finish_lesion_mask(plain.mask)[0])
    np.testing.assert_array_equal(finished.coarse, plain.coarse)  # the global branch's own mask is left as it was
    assert any(note.startswith("ISIC finishing") for note in finished.notes)


def test_a_finished_mask_gets_a_note_that_nothing_changed(monkeypatch):
    import glmed

    model = _tiny()
    _answering(model, monkeypatch, lesion((64, 64)))
    result = glmed.predict(model, np.zeros((64, 64, 3), dtype=np.uint8), global_only=True, finish="lesion")
    assert "ISIC finishing (one lesion region, no holes) changed nothing" in result.notes


def test_finish_is_refused_for_multi_class_models_and_bad_settings():
    import glmed

    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="3 classes.*leave finish=None"):
        glmed.predict(_tiny(classes=3), pixels, finish="lesion")
    with pytest.raises(ValueError, match="unknown finish 'holes'"):
        glmed.predict(_tiny(), pixels, finish="holes")
    with pytest.raises(ValueError, match="keep_regions_above applies only with finish"):
        glmed.predict(_tiny(), pixels, keep_regions_above=10)
    with pytest.raises(ValueError, match="pixel count >= 0"):
        glmed.predict(_tiny(), pixels, finish="lesion", keep_regions_above=-1)
