"""The shared reader behaviour: level mapping, box checks, the pixel limit, the streamed downsampled view."""

import numpy as np
import pytest
import torch

from glmed.io.base import STRIPE_BYTES, ArrayReader, ImageReader, ImageTooLargeError


class PyramidReader(ImageReader):
    """An in-memory two-level pyramid that counts the pixels it hands out."""

    def __init__(self, levels):
        self.levels = levels
        self.served = []

    size = property(lambda self: self.levels[0].shape[:2])
    channels = property(lambda self: self.levels[0].shape[2])
    dtype = property(lambda self: self.levels[0].dtype)
    level_sizes = property(lambda self: tuple(level.shape[:2] for level in self.levels))

    def _read_level(self, level, box):
        r0, c0, r1, c1 = box
        self.served.append((r1 - r0) * (c1 - c0))
        return self.levels[level][r0:r1, c0:c1]


def test_array_reader_reads_regions_as_copies_the_caller_owns(make_image):
    image = make_image(40, 30)
    reader = ArrayReader(image, name="img")
    region = reader.read((5, 6, 25, 16))
    np.testing.assert_array_equal(region, image[5:25, 6:16])
    region[:] = 0
    assert image[5:25, 6:16].any() and reader.read((5, 6, 25, 16)).any()
    assert not reader.pixels().flags.writeable and image.flags.writeable
    assert reader.dtype == np.uint8 and reader.channels == 3 and reader.level_downsamples == (1.0,)


@pytest.mark.parametrize("box", [(0, 0, 0, 5), (-1, 0, 5, 5), (0, 0, 41, 5), (10, 10, 5, 20), (0, 0, 5)])
def test_bad_boxes_name_the_image(box):
    with pytest.raises(ValueError, match="img"):
        ArrayReader(np.zeros((40, 30), np.uint8), name="img").read(box)


def test_missing_level_names_the_levels():
    with pytest.raises(ValueError, match="levels 0..0"):
        ArrayReader(np.zeros((4, 4), np.uint8), name="img").read((0, 0, 2, 2), level=1)


def test_level_read_maps_the_box_onto_the_level_grid(make_image):
    full = make_image(64, 96)
    half = full[::2, ::2]
    reader = PyramidReader([full, half])
    assert reader.level_downsamples == (1.0, 2.0)
    assert reader.level_box((10, 20, 30, 60), 1) == (5, 10, 15, 30)
    np.testing.assert_array_equal(reader.read((10, 20, 30, 60), level=1), half[5:15, 10:30])
    assert reader.best_level_for((32, 48)) == 1 and reader.best_level_for((33, 48)) == 0


def test_reads_larger_than_max_pixels_are_refused(make_image):
    reader = PyramidReader([make_image(64, 64)])
    reader.max_pixels = 1000
    assert reader.read((0, 0, 20, 50)).shape == (20, 50, 3)
    with pytest.raises(ImageTooLargeError, match="max_pixels"):
        reader.read((0, 0, 40, 40))


def test_resized_streams_in_stripes_of_block_means(monkeypatch, make_image):
    image = make_image(600, 400).astype(np.float32)  # float: nothing rounds, the means must be exact
    monkeypatch.setattr("glmed.io.base.STRIPE_BYTES", 64 * 400 * 3 * 4)
    reader = PyramidReader([image])
    view = reader.resized((60, 40))
    assert view.shape == (60, 40, 3) and view.dtype == np.float32
    assert max(reader.served) <= 70 * 400 and len(reader.served) > 5  # stripes, never the whole image
    np.testing.assert_allclose(view, image.reshape(60, 10, 40, 10, 3).mean(axis=(1, 3)), rtol=1e-5)


def test_resized_with_uneven_blocks_is_close_to_an_exact_area_average():
    rows, cols = np.meshgrid(np.arange(601), np.arange(403), indexing="ij")
    smooth = (127 + 100 * np.sin(rows / 40.0) * np.cos(cols / 25.0)).astype(np.uint8)[:, :, None]
    view = PyramidReader([smooth]).resized((60, 40))
    assert view.shape == (60, 40, 1) and view.dtype == np.uint8
    exact = torch.nn.functional.adaptive_avg_pool2d(torch.tensor(smooth[..., 0], dtype=torch.float64)[None], (60, 40))
    error = np.abs(view[..., 0] - exact[0].numpy())
    assert error.max() <= 3 and error.mean() < 1.5  # bilinear antialiased resize itself: 2.4 and 1.0


def test_resized_uses_the_coarsest_sufficient_level(make_image):
    full = make_image(400, 400)
    reader = PyramidReader([full, full[::2, ::2], full[::4, ::4]])
    view = reader.resized((100, 100))
    assert view.shape == (100, 100, 3) and view.dtype == np.uint8
    assert sum(reader.served) == 100 * 100  # level 2, read once
    assert STRIPE_BYTES >= 2**20
