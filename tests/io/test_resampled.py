"""ResampledReader: a slide at another µm/px, read from the right level, seamless region by region."""

import numpy as np
import pytest

from glmed.data.synthetic.slides import write_synthetic_slide
from glmed.io import ArrayReader, open_image
from glmed.io.base import resize_image
from glmed.io.resampled import ResampledReader, source_level
from glmed.io.resolution import microns_per_pixel


@pytest.fixture
def slide(tmp_path):
    """A lossless generic TIFF, 240×300 at 0.25 µm/px, halving per level (0.5, 1.0, 2.0 µm/px)."""
    return write_synthetic_slide(tmp_path / "slide.tif", (240, 300), seed=2, kind="tiff", tile=64, mpp=0.25,
                                 compression="zlib").path


@pytest.mark.parametrize("target, level", [(0.25, 0), (0.3, 0), (0.5, 1), (0.504, 1), (0.9, 1), (1.0, 2), (9.0, 3)])
def test_the_source_level_is_the_coarsest_not_coarser_than_the_target(slide, target, level):
    with open_image(slide) as reader:
        assert reader.level_downsamples == pytest.approx((1, 2, 4, 8), rel=0.01)
        assert source_level(reader, target, (0.25, 0.25)) == level


def test_at_a_levels_own_resolution_its_pixels_are_read_as_they_are(slide):
    with open_image(slide) as reader:
        view = ResampledReader(reader, 0.5, (0.25, 0.25))
        assert view.size == reader.level_sizes[1] and view.source_level == 1
        np.testing.assert_array_equal(view.read((0, 0, *view.size)), reader.read((0, 0, *reader.size), level=1))
        assert view.level_sizes == reader.level_sizes[1:]  # the coarser levels are its pyramid
        assert microns_per_pixel(view) == pytest.approx((0.5, 0.5))
        assert microns_per_pixel(view.crop((0, 0, 10, 10))) == pytest.approx((0.5, 0.5))
        assert view.scale == pytest.approx((2.0, 2.0))


def test_regions_tile_seamlessly_between_levels(slide):
    with open_image(slide) as reader:
        view = ResampledReader(reader, 0.37, (0.25, 0.25))  # between levels 0 and 1: from level 0, shrunk
        assert view.size == (162, 203) and view.source_level == 0
        whole = view.read((0, 0, *view.size))
        for box in [(0, 0, 50, 60), (37, 81, 120, 203), (161, 202, 162, 203)]:
            np.testing.assert_array_equal(view.read(box), whole[box[0] : box[2], box[1] : box[3]])
        # an anti-aliased resize of level 0, to within rounding at most pixels
        expected = resize_image(reader.read((0, 0, *reader.size)), view.size).astype(int)
        assert np.abs(whole.astype(int) - expected).mean() < 2


def test_finer_than_the_scan_is_interpolated_and_the_whole_views_are_the_slides():
    pixels = np.arange(20 * 30 * 3, dtype=np.uint16).reshape(20, 30, 3)
    source = ArrayReader(pixels)
    view = ResampledReader(source, 0.25, (0.5, 0.5))
    assert view.size == (40, 60) and view.read((0, 0, 40, 60)).dtype == np.uint16
    np.testing.assert_array_equal(view.resized((10, 15)), source.resized((10, 15)))
    np.testing.assert_array_equal(view.sampled((10, 15)), source.sampled((10, 15)))


@pytest.mark.parametrize("target", [0, -1.0, float("nan"), float("inf")])
def test_a_bad_target_is_refused(target):
    with pytest.raises(ValueError, match="target µm/px must be a positive number"):
        ResampledReader(ArrayReader(np.zeros((4, 4, 3), np.uint8)), target, (0.5, 0.5))


def test_large_regions_are_resampled_in_row_chunks_with_the_same_pixels(slide, monkeypatch):
    with open_image(slide) as reader:
        view = ResampledReader(reader, 0.37, (0.25, 0.25))
        whole = view.read((0, 0, *view.size))
        monkeypatch.setattr("glmed.io.resampled.CHUNK_BYTES", 1)  # one output row at a time
        np.testing.assert_array_equal(view.read((0, 0, *view.size)), whole)
