"""Flat images through Pillow: exact reads, every mode's documented layout, and bad files named in errors."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from glmed.io import ImageFormatError, ImageTooLargeError, open_image
from glmed.io.pillow_reader import PillowReader


@pytest.mark.parametrize("suffix", [".png", ".bmp"])
def test_lossless_files_read_pixel_exact(tmp_path, make_image, suffix):
    image = make_image(37, 53)
    path = tmp_path / f"img{suffix}"
    Image.fromarray(image).save(path)
    reader = open_image(path)
    assert isinstance(reader, PillowReader)
    assert reader.size == (37, 53) and reader.channels == 3 and reader.dtype == np.uint8
    np.testing.assert_array_equal(reader.read((3, 5, 30, 50)), image[3:30, 5:50])
    np.testing.assert_array_equal(reader.read((0, 0, 37, 53)), image)


def test_jpeg_reads_as_pillow_decodes_it_and_is_decoded_once(tmp_path, make_image, monkeypatch):
    path = tmp_path / "img.jpg"
    Image.fromarray(make_image(64, 80)).save(path, quality=90)
    decoded = np.asarray(Image.open(path))
    reader = open_image(path)
    calls = []
    original = PillowReader._decode
    monkeypatch.setattr(PillowReader, "_decode", lambda self: calls.append(1) or original(self))
    np.testing.assert_array_equal(reader.read((10, 20, 40, 60)), decoded[10:40, 20:60])
    reader.resized((16, 20))
    reader.read((0, 0, 5, 5))
    assert len(calls) == 1


@pytest.mark.parametrize(
    "mode, make, channels, dtype, expected",
    [
        ("L", lambda a: Image.fromarray(a[..., 0]), 1, np.uint8, lambda a: a[..., :1]),
        ("1", lambda a: Image.fromarray(a[..., 0] > 127), 1, np.uint8, lambda a: (a[..., :1] > 127) * np.uint8(255)),
        ("LA", lambda a: Image.fromarray(a[..., :2]), 2, np.uint8, lambda a: a[..., :2]),
        (
            "RGBA",
            lambda a: Image.fromarray(np.dstack([a, a[..., :1]])),
            4,
            np.uint8,
            lambda a: np.dstack([a, a[..., :1]]),
        ),
        (
            "I;16",
            lambda a: Image.fromarray(a[..., 0] * np.uint16(257)),
            1,
            np.uint16,
            lambda a: a[..., :1] * np.uint16(257),
        ),
        (
            "P",
            lambda a: Image.fromarray(a[..., 0] & 0xC0).convert("P"),
            3,
            np.uint8,
            lambda a: (a[..., :1] & 0xC0).repeat(3, 2),
        ),
    ],
)
def test_modes_decode_to_the_documented_layout(tmp_path, make_image, mode, make, channels, dtype, expected):
    image = make_image(20, 30)
    path = tmp_path / "img.png"
    picture = make(image)
    assert picture.mode == mode
    picture.save(path)
    reader = open_image(path)
    assert (reader.channels, reader.dtype) == (channels, dtype)
    np.testing.assert_array_equal(reader.read((0, 0, 20, 30)), expected(image))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (32, 24), (200, 30, 60)).convert("CMYK").save(path, quality=95)
    reader = open_image(path)
    assert reader.channels == 3
    assert np.abs(reader.read((0, 0, 24, 32)).astype(int) - [200, 30, 60]).max() <= 8


@pytest.mark.parametrize("suffix, keep", [(".jpg", 0.6), (".png", 0.6), (".png", 0.999)])
def test_truncated_files_are_named(tmp_path, make_image, suffix, keep):
    path = tmp_path / f"cut{suffix}"
    Image.fromarray(make_image(64, 64)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageFormatError, match="cut.*truncated"):
        open_image(path).read((0, 0, 64, 64))


def test_corrupt_data_behind_a_valid_header_is_named_on_decoding(tmp_path, make_image):
    path = tmp_path / "bad.png"
    Image.fromarray(make_image(64, 64)).save(path)
    data = bytearray(path.read_bytes())
    data[60:200] = bytes(140)  # inside the image data stream, the end marker kept
    path.write_bytes(bytes(data))
    reader = open_image(path)
    with pytest.raises(ImageFormatError, match="bad.png: cannot decode"):
        reader.read((0, 0, 8, 8))


def _png_claiming(path, height, width):
    Image.new("L", (8, 8)).save(path, format="PNG")
    data = bytearray(path.read_bytes())
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    path.write_bytes(bytes(data))


def _jpeg_claiming(path, height, width):
    Image.new("L", (8, 8)).save(path, format="JPEG")
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("write", [_png_claiming, _jpeg_claiming])
def test_decompression_bomb_headers_are_refused_before_decoding(tmp_path, write):
    path = tmp_path / "bomb.img"
    write(path, 60000, 60000)  # 3.6e9 pixels claimed by a file of a few hundred bytes
    with pytest.raises(ImageTooLargeError, match=r"bomb.img: .*60000 x 60000.*max_pixels"):
        open_image(path)


def test_our_limit_replaces_pillows_own(tmp_path):
    path = tmp_path / "big.png"
    _png_claiming(path, 15000, 15000)  # 2.25e8: above Pillow's default bomb limit, below glmed's
    reader = open_image(path)
    assert reader.size == (15000, 15000)
    with pytest.raises(ImageTooLargeError, match="big.png"):
        open_image(path, max_pixels=10**8)
    with pytest.raises(ImageFormatError, match="big.png: cannot decode"):
        reader.read((0, 0, 10, 10))
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's global setting was restored
