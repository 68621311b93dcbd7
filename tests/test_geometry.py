import numpy as np
import pytest

from glmed.geometry import axis_starts, footprint, map_box, normalize_boxes, patch_grid


def coverage(grid, size):
    counts = np.zeros(size, dtype=np.int32)
    for r0, c0, r1, c1 in grid.boxes:
        counts[r0:r1, c0:c1] += 1
    return counts


@pytest.mark.parametrize(
    "size, patch, overlap",
    [((4499, 6748), 508, 50), ((509, 509), 508, 50), ((1000, 50), 508, 50), ((50, 1000), 508, 50),
     ((2448, 2448), 508, 50), ((508, 508), 508, 50), ((1, 1), 508, 50), ((777, 333), 100, 99)],
)
def test_grid_covers_every_pixel_with_equal_patches_inside_the_image(size, patch, overlap):
    grid = patch_grid(size, patch, overlap)
    assert (coverage(grid, size) >= 1).all()
    ph, pw = grid.patch_size
    assert (ph, pw) == (min(patch, size[0]), min(patch, size[1]))
    assert ((grid.boxes[:, 2] - grid.boxes[:, 0]) == ph).all() and ((grid.boxes[:, 3] - grid.boxes[:, 1]) == pw).all()
    assert grid.boxes.min() >= 0 and grid.boxes[:, 2].max() == size[0] and grid.boxes[:, 3].max() == size[1]


@pytest.mark.parametrize("length", [509, 1000, 2448, 4499, 6748])
def test_neighbours_overlap_by_at_least_the_minimum(length):
    starts = axis_starts(length, 508, 50)
    assert starts[0] == 0 and starts[-1] == length - 508
    assert min(508 - (b - a) for a, b in zip(starts, starts[1:])) >= 50


def test_deepglobe_grid_matches_the_paper():
    # 2448-pixel DeepGlobe images are tiled 6×6 by 508-pixel patches.
    assert len(patch_grid((2448, 2448), 508, 50)) == 36


def test_grid_inside_a_region_stays_in_it_and_covers_it():
    region = (100, 200, 900, 1500)
    grid = patch_grid((1000, 2000), 256, 32, region=region)
    assert grid.boxes[:, 0].min() == 100 and grid.boxes[:, 2].max() == 900
    assert grid.boxes[:, 1].min() == 200 and grid.boxes[:, 3].max() == 1500
    counts = coverage(grid, (1000, 2000))
    assert (counts[100:900, 200:1500] >= 1).all()
    assert counts.sum() == counts[100:900, 200:1500].sum()


def test_box_round_trips_through_the_global_map_exactly():
    size = (4499, 6748)
    grid = patch_grid(size, 508, 50)
    for box in grid.boxes:
        on_global = map_box(tuple(box), size, (508, 508))
        back = map_box(on_global, (508, 508), size)
        assert tuple(int(round(v)) for v in back) == tuple(box)
        assert np.allclose(back, box, atol=1e-9)
    np.testing.assert_allclose(normalize_boxes(grid.boxes, size) * [4499, 6748, 4499, 6748], grid.boxes, atol=1e-9)


def test_footprint_is_never_empty_and_stays_on_the_grid():
    assert footprint((0, 0, 1, 1), (10000, 10000), (8, 8)) == (0, 0, 1, 1)
    assert footprint((9999, 9999, 10000, 10000), (10000, 10000), (8, 8)) == (7, 7, 8, 8)
    assert footprint((0, 0, 5000, 10000), (10000, 10000), (8, 8)) == (0, 0, 4, 8)


@pytest.mark.parametrize("bad", [dict(image_size=(0, 5)), dict(patch_size=0), dict(overlap=508), dict(overlap=-1),
                                 dict(region=(0, 0, 0, 10)), dict(region=(0, 0, 20, 2000))])
def test_bad_arguments_are_refused_with_a_message(bad):
    args = dict(image_size=(100, 100), patch_size=508, overlap=50) | bad
    with pytest.raises(ValueError, match=r"\w"):
        patch_grid(**args)


# -- coarse-to-fine boxes ----------------------------------------------------------------

from glmed.geometry import coarse_to_fine_boxes, grow_to_size, merge_overlapping, relax_box, tight_box  # noqa: E402


def ratio_inside(mask, box):
    inside = mask[box[0]:box[2], box[1]:box[3]]
    fg = int(inside.sum())
    return fg / max(inside.size - fg, 1)


def square_lesion(size=(100, 100), top=40, left=40, side=20):
    mask = np.zeros(size, dtype=np.uint8)
    mask[top:top + side, left:left + side] = 1
    return mask


def test_relaxation_grows_symmetrically_one_pixel_per_edge_until_one_to_one():
    mask = square_lesion()
    tight = tight_box(mask)
    assert tight == (40, 40, 60, 60) and ratio_inside(mask, tight) > 1
    box = relax_box(mask, tight, 1.0)
    # 400 foreground pixels need a box of at least 800: 20+2k squared >= 800 first at k=5 (30² = 900)
    assert box == (35, 35, 65, 65)
    assert ratio_inside(mask, box) <= 1.0
    smaller = (36, 36, 64, 64)  # one step less is still above the ratio
    assert ratio_inside(mask, smaller) > 1.0


def test_relaxation_clamps_at_borders_and_keeps_growing_inward():
    mask = square_lesion(top=0, left=0, side=20)
    box = relax_box(mask, tight_box(mask), 1.0)
    assert box[:2] == (0, 0)
    assert box == (0, 0, 29, 29)  # 29² = 841 >= 800 > 28² = 784
    assert ratio_inside(mask, box) <= 1.0


def test_box_already_below_the_ratio_is_unchanged():
    mask = np.zeros((50, 50), dtype=np.uint8)
    mask[10, 10:40] = 1  # a thin diagonal-free line: its tight box is all foreground
    mask[10:40, 10] = 1   # an L shape: tight box 30×30 with 59 foreground pixels
    tight = tight_box(mask)
    assert relax_box(mask, tight, 1.0) == tight


def test_target_ratio_sets_how_much_background_is_taken():
    mask = square_lesion()
    loose = relax_box(mask, tight_box(mask), 0.25)
    assert ratio_inside(mask, loose) <= 0.25 < ratio_inside(mask, (loose[0] + 1, loose[1] + 1, loose[2] - 1,
                                                                     loose[3] - 1))


def test_mostly_foreground_image_relaxes_to_the_whole_image():
    mask = np.ones((30, 40), dtype=np.uint8)
    assert relax_box(mask, (5, 5, 10, 10), 1.0) == (0, 0, 30, 40)


def test_no_foreground_gives_no_box():
    assert coarse_to_fine_boxes(np.zeros((20, 20)), (2000, 2000)) == []


def test_two_lesions_one_box_by_default_one_each_on_request():
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[10:20, 10:20] = 1
    mask[70:80, 70:90] = 1
    (around_all,) = coarse_to_fine_boxes(mask, (100, 100))
    assert around_all[0] <= 10 and around_all[1] <= 10 and around_all[2] >= 80 and around_all[3] >= 90
    separate = coarse_to_fine_boxes(mask, (100, 100), per_component=True)
    assert len(separate) == 2
    for box in separate:
        assert ratio_inside(mask, box) <= 1.0
    assert separate[0][2] <= 70 and separate[1][0] >= 20


def test_overlapping_component_boxes_are_merged():
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[40:50, 40:50] = 1
    mask[52:62, 52:62] = 1  # a separate component whose relaxed box overlaps the first's
    boxes = coarse_to_fine_boxes(mask, (100, 100), per_component=True)
    assert len(boxes) == 1
    assert merge_overlapping([(0, 0, 5, 5), (4, 4, 9, 9), (20, 20, 30, 30), (8, 8, 21, 21)]) == [(0, 0, 30, 30)]
    # touching is not overlapping
    assert merge_overlapping([(0, 0, 5, 5), (5, 5, 9, 9)]) == [(0, 0, 5, 5), (5, 5, 9, 9)]


def test_boxes_map_to_full_resolution_outward_and_grow_to_one_patch():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[4:6, 4:6] = 1
    (box,) = coarse_to_fine_boxes(mask, (1000, 1000), min_size=(1, 1))
    assert box == (300, 300, 700, 700)  # relaxed to 4×4 on the grid: rows 3..7, scaled ×100
    (tiny,) = coarse_to_fine_boxes(mask, (1000, 1000), min_size=(508, 508))
    assert (tiny[2] - tiny[0], tiny[3] - tiny[1]) == (508, 508)
    assert tiny[0] <= 300 and tiny[2] >= 700


def test_growing_to_a_patch_stays_inside_the_image():
    assert grow_to_size((0, 0, 10, 10), (508, 508), (600, 400)) == (0, 0, 508, 400)
    assert grow_to_size((590, 390, 600, 400), (508, 508), (600, 4000)) == (92, 141, 600, 649)
