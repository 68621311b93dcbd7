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
