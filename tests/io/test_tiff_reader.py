"""TIFF through tifffile: every layout reads pixel-exact, and a region decodes only the tiles it touches."""

import numpy as np
import pytest
import tifffile

from glmed.io import ImageFormatError, ImageTooLargeError, open_image, write_pyramidal_tiff
from glmed.io.tiff_reader import TiffReader
from glmed.io.writers import pyramid

BOXES = [(0, 0, 300, 500), (17, 33, 283, 301), (256, 256, 257, 257), (250, 490, 300, 500)]


def _write(path, image, **options):
    tifffile.imwrite(path, image, **options)
    return path


@pytest.mark.parametrize(
    "options",
    [
        dict(),  # one strip per image
        dict(rowsperstrip=7, compression="zlib"),
        dict(tile=(64, 128), compression="zlib"),
        dict(tile=(64, 64), bigtiff=True),
        dict(tile=(32, 32), compression="lzw", predictor=True),
    ],
    ids=["plain", "strips", "tiled", "bigtiff", "lzw"],
)
def test_every_layout_reads_pixel_exact(tmp_path, make_image, options):
    image = make_image(300, 500)
    reader = open_image(_write(tmp_path / "img.tif", image, photometric="rgb", **options))
    assert isinstance(reader, TiffReader) and reader.size == (300, 500) and reader.channels == 3
    for r0, c0, r1, c1 in BOXES:
        np.testing.assert_array_equal(reader.read((r0, c0, r1, c1)), image[r0:r1, c0:c1])


@pytest.mark.parametrize(
    "dtype, channels", [(np.uint16, 1), (np.uint8, 1), (np.uint8, 2), (np.uint8, 4), (np.float32, 1)]
)
def test_grey_16bit_alpha_and_float_keep_their_channels_and_dtype(tmp_path, make_image, dtype, channels):
    image = make_image(90, 70, channels, dtype)
    data = image[..., 0] if channels == 1 else image
    layout = dict(photometric="minisblack" if channels < 3 else "rgb", planarconfig="contig" if channels > 1 else None)
    reader = open_image(_write(tmp_path / "img.tif", data, tile=(32, 32), **layout))
    assert (reader.channels, reader.dtype) == (channels, np.dtype(dtype))
    np.testing.assert_array_equal(reader.read((5, 6, 80, 66)), image[5:80, 6:66])


def test_planar_separate_samples_are_interleaved(tmp_path, make_image):
    image = make_image(100, 120)
    path = _write(
        tmp_path / "planar.tif", np.moveaxis(image, 2, 0), planarconfig="separate", photometric="rgb", tile=(32, 32)
    )
    np.testing.assert_array_equal(open_image(path).read((10, 40, 90, 100)), image[10:90, 40:100])


def test_bilevel_reads_as_0_255(tmp_path, make_image):
    mask = make_image(40, 50)[..., 0] > 127
    reader = open_image(_write(tmp_path / "mask.tif", mask))
    assert reader.dtype == np.uint8
    np.testing.assert_array_equal(reader.read((0, 0, 40, 50))[..., 0], mask.astype(np.uint8) * 255)


@pytest.mark.parametrize("where", ["chain", "subifds", "chain-unmarked"])
def test_pyramid_levels_are_found_in_the_page_chain_or_subifds(tmp_path, make_image, where):
    levels = pyramid(make_image(600, 1000), levels=3)
    path = tmp_path / f"{where}.tif"
    with tifffile.TiffWriter(path) as writer:
        for index, level in enumerate(levels):
            options = dict(tile=(128, 128), compression="zlib", photometric="rgb")
            if where == "subifds" and index == 0:
                options["subifds"] = 2
            if where != "chain-unmarked" and index:
                options["subfiletype"] = 1
            writer.write(level, **options)
    reader = open_image(path)
    assert reader.level_sizes == ((600, 1000), (300, 500), (150, 250))
    assert reader.level_downsamples == (1.0, 2.0, 4.0)
    np.testing.assert_array_equal(reader.read((100, 200, 356, 712), level=1), levels[1][50:178, 100:356])
    np.testing.assert_array_equal(reader.read((0, 0, 600, 1000), level=2), levels[2])


def test_a_label_image_in_the_chain_is_not_a_level(tmp_path, make_image):
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(make_image(512, 512), tile=(128, 128), photometric="rgb")
        writer.write(make_image(100, 300), tile=(64, 64), photometric="rgb")  # wrong aspect: a label
    assert open_image(path).level_sizes == ((512, 512),)


def test_region_reads_decode_only_the_tiles_they_overlap(tmp_path, make_image, monkeypatch):
    path = tmp_path / "tiles.tif"
    write_pyramidal_tiff(path, make_image(1024, 1024), levels=1, tile=128, compression="zlib")
    reader = open_image(path)
    decoded = []
    original = tifffile.FileHandle.read_segments
    def spy(self, offsets, counts, indices, **options):
        decoded.extend(indices)
        return original(self, offsets, counts, indices, **options)

    monkeypatch.setattr(tifffile.FileHandle, "read_segments", spy)
    reader.read((100, 130, 300, 390))  # rows 0..2 x cols 1..3 of 8 x 8 tiles
    assert sorted(decoded) == [r * 8 + c for r in range(3) for c in range(1, 4)]


def test_truncated_tiff_is_named_on_opening(tmp_path, make_image):
    path = tmp_path / "cut.tif"
    write_pyramidal_tiff(path, make_image(512, 512), levels=2, tile=128, compression=None)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageFormatError, match="cut.tif"):
        open_image(path)


def test_corrupt_tiff_is_named(tmp_path):
    path = tmp_path / "junk.tif"
    path.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    with pytest.raises(ImageFormatError, match="junk.tif"):
        open_image(path)


def test_corrupt_tile_is_named_on_reading(tmp_path, make_image):
    path = tmp_path / "badtile.tif"
    write_pyramidal_tiff(path, make_image(256, 256), levels=1, tile=128, compression="zlib")
    with tifffile.TiffFile(path) as tiff:
        offset = tiff.pages[0].dataoffsets[3]
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = bytes(64)
    path.write_bytes(bytes(data))
    reader = open_image(path)
    reader.read((0, 0, 128, 128))  # other tiles still read
    with pytest.raises(ImageFormatError, match="badtile.tif: cannot decode level 0"):
        reader.read((200, 200, 256, 256))


def test_stack_is_refused(tmp_path):
    path = _write(tmp_path / "stack.tif", np.zeros((4, 30, 40), np.uint8), photometric="minisblack")
    with pytest.raises(ImageFormatError, match="stack.tif: .*stack of 4"):
        open_image(path)


def test_a_strip_larger_than_max_pixels_is_refused(tmp_path, make_image):
    path = _write(tmp_path / "flat.tif", make_image(200, 300))  # one strip of 60000 pixels
    with pytest.raises(ImageTooLargeError, match="flat.tif"):
        open_image(path, max_pixels=50000)
    assert open_image(path, max_pixels=None).size == (200, 300)
