import numpy as np

from glmed.inference.notes import box_edge_notes, cover_notes, foreground_fraction, size_notes


def test_foreground_fraction_counts_band_by_band():
    mask = np.zeros((5000, 3), dtype=np.uint8)
    mask[4999, 0] = 1
    mask[:2, :] = 2
    assert foreground_fraction(mask) == 7 / 15000


def test_nearly_all_or_almost_no_foreground_gets_a_note():
    assert "99.9%" in cover_notes(0.999)[0] and "untrained" in cover_notes(0.999)[0]
    assert "0.050%" in cover_notes(0.0005)[0]
    assert cover_notes(0.3) == [] and cover_notes(0.0) == []


def test_a_mask_cut_by_its_box_is_noted_but_not_at_the_image_border():
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[20:60, 30:70] = 1  # the lesion fills the box's right part up to its right side
    box = (10, 10, 60, 70)  # right side inside the image, bottom side inside the image
    (note,) = box_edge_notes(mask, [box], (100, 100))
    assert "right" in note and "bottom" in note and "top" not in note and str(box) in note
    at_border = box_edge_notes(mask, [(10, 10, 60, 100)], (100, 100))  # right side on the border: fine
    assert "right" not in at_border[0] and "bottom" in at_border[0]
    assert box_edge_notes(mask, [(0, 0, 100, 100)], (100, 100)) == []
    inside = np.zeros_like(mask)
    inside[30:40, 30:40] = 1
    assert box_edge_notes(inside, [(10, 10, 60, 70)], (100, 100)) == []


def test_an_image_far_from_the_training_size_is_noted():
    assert size_notes((4000, 6000), (400, 600))[0].startswith("the image is 4000×6000")
    assert size_notes((100, 150), (1000, 1500)) != []
    assert size_notes((1200, 1800), (1000, 1500)) == []
    assert size_notes((4000, 6000), None) == []
