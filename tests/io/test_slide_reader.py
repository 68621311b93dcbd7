"""Slides through OpenSlide: the same pixels as tifffile on the same pyramid, (row, col) throughout."""

import numpy as np
import pytest
import tifffile

from glmed.io import ImageFormatError, open_image, write_pyramidal_tiff
from glmed.io.slide_reader import SlideReader
from glmed.io.tiff_reader import TiffReader
from glmed.io.writers import pyramid

pytest.importorskip("openslide")

BOXES = [(0, 0, 768, 1024), (100, 260, 612, 900), (8, 16, 24, 40), (760, 1000, 768, 1024)]


@pytest.fixture(scope="module")
def lossless_slide(tmp_path_factory):
    image = np.random.default_rng(1).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("slide") / "lossless.tif"
    write_pyramidal_tiff(path, image, levels=3, tile=256, compression="zlib")
    return path, pyramid(image, levels=3)


def test_openslide_and_tifffile_read_a_lossless_pyramid_exactly(lossless_slide):
    path, levels = lossless_slide
    with SlideReader(path) as slide, TiffReader(path) as tiff:
        assert slide.size == tiff.size == (768, 1024)
        assert slide.level_sizes == tiff.level_sizes == ((768, 1024), (384, 512), (192, 256))
        assert slide.level_downsamples == tiff.level_downsamples == (1.0, 2.0, 4.0)
        for level in range(3):
            for box in BOXES:
                r0, c0, r1, c1 = slide.level_box(box, level)
                expected = levels[level][r0:r1, c0:c1]
                np.testing.assert_array_equal(slide.read(box, level), expected, err_msg=f"openslide {box} @ {level}")
                np.testing.assert_array_equal(tiff.read(box, level), expected, err_msg=f"tifffile {box} @ {level}")


def test_openslide_and_tifffile_decode_jpeg_tiles_identically(tmp_path, make_image):
    path = tmp_path / "jpeg.tif"
    write_pyramidal_tiff(path, make_image(600, 700), levels=2, tile=128, compression="jpeg")
    with SlideReader(path) as slide, TiffReader(path) as tiff:
        for level in (0, 1):
            np.testing.assert_array_equal(slide.read((64, 128, 576, 640), level), tiff.read((64, 128, 576, 640), level))


def test_slide_extensions_open_with_openslide(lossless_slide, tmp_path):
    path = tmp_path / "renamed.svs"
    path.write_bytes(lossless_slide[0].read_bytes())
    assert isinstance(open_image(path), SlideReader)
    assert isinstance(open_image(lossless_slide[0]), TiffReader)
    assert isinstance(open_image(lossless_slide[0], backend="openslide"), SlideReader)


def test_transparent_areas_become_the_background(tmp_path):
    path = tmp_path / "sparse.tif"
    tile = np.full((128, 128, 3), 40, np.uint8)
    tiles = [tile, None, tile, tile]  # the second tile was never scanned
    tifffile.imwrite(path, iter(tiles), shape=(256, 256, 3), dtype=np.uint8, tile=(128, 128), photometric="rgb")
    region = open_image(path, backend="openslide").read((0, 0, 256, 256))
    assert region.shape == (256, 256, 3)
    assert (region[:128, 128:] == 255).all() and (region[:128, :128] == 40).all()


def test_non_integer_downsamples_read_close_to_the_level(tmp_path):
    rows, cols = np.meshgrid(np.arange(601), np.arange(901), indexing="ij")
    smooth = np.repeat((127 + 100 * np.sin(rows / 30.0) * np.cos(cols / 20.0)).astype(np.uint8)[:, :, None], 3, axis=2)
    path = tmp_path / "odd.tif"
    write_pyramidal_tiff(path, smooth, levels=2, tile=128, compression="zlib")
    with SlideReader(path) as slide, TiffReader(path) as tiff:
        assert slide.level_sizes[1] == (301, 451)
        a, b = slide.read((201, 301, 501, 801), 1), tiff.read((201, 301, 501, 801), 1)
        assert a.shape == b.shape == (150, 250, 3)
        assert np.abs(a.astype(int) - b).mean() < 2  # OpenSlide resamples at a sub-pixel offset here


def test_files_openslide_cannot_read_are_named(tmp_path, make_image):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(make_image(32, 32)).save(path)
    with pytest.raises(ImageFormatError, match="photo.png"):
        open_image(path, backend="openslide")
    mrxs = tmp_path / "broken.mrxs"
    mrxs.write_text("[GENERAL]\n")
    with pytest.raises(ImageFormatError, match="broken.mrxs"):
        open_image(mrxs)
