"""The fast greyscale PNG decoder: Pillow's pixels whenever it decodes, and None otherwise."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from glmed.io import grey_png
from glmed.io.grey_png import decode_grey8_png

FILTERS = {"none": 0, "sub": 1, "up": 2, "average": 3, "paeth": 4}


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _filter_rows(image: np.ndarray, filters: np.ndarray) -> bytes:
    """The PNG spec's forward filters, one chosen per row (an independent reference encoder)."""
    rows, above = [], np.zeros(image.shape[1], np.int32)
    for row, kind in zip(image.astype(np.int32), filters):
        left = np.concatenate(([0], row[:-1]))
        up_left = np.concatenate(([0], above[:-1]))
        estimate = left + above - up_left
        to_left, to_up, to_up_left = (np.abs(estimate - v) for v in (left, above, up_left))
        paeth = np.where((to_left <= to_up) & (to_left <= to_up_left), left,
                         np.where(to_up <= to_up_left, above, up_left))
        predicted = [0, left, above, (left + above) >> 1, paeth][kind]
        rows.append(bytes([kind]) + ((row - predicted) & 0xFF).astype(np.uint8).tobytes())
        above = row
    return b"".join(rows)


def encode_png(image: np.ndarray, filters, *, after_image: bytes = b"", wbits: int = 15,
               ihdr_tail: bytes = b"\x08\x00\x00\x00\x00") -> bytes:
    """An 8-bit greyscale PNG of ``image`` with the given per-row filters, split over 2 IDATs."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    stream = compressor.compress(_filter_rows(image, np.asarray(filters))) + compressor.flush()
    height, width = image.shape
    half = len(stream) // 2
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">II", width, height) + ihdr_tail)
            + _chunk(b"IDAT", stream[:half]) + _chunk(b"IDAT", stream[half:]) + after_image
            + _chunk(b"IEND", b""))


def pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def lesion(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = Image.new("L", (width, height), 0)
    (left, right), (top, bottom) = sorted(rng.uniform(0, width, 2)), sorted(rng.uniform(0, height, 2))
    ImageDraw.Draw(image).ellipse([left, top, right, bottom], fill=255)
    return np.array(image)


@pytest.fixture
def always_fast(monkeypatch):
    """Lift the cost limits so every image the decoder can handle takes the fast path."""
    monkeypatch.setattr(grey_png, "_MAX_CHANGES_PER_PIXEL", float("inf"))
    monkeypatch.setattr(grey_png, "_MAX_BUSY_WORDS", float("inf"))


@pytest.mark.parametrize("kind", ["mask", "noise", "grey levels"])
def test_every_filter_mix_decodes_to_the_encoded_pixels(always_fast, kind):
    rng = np.random.default_rng(len(kind))
    for trial in range(40):
        height, width = rng.integers(1, 30, 2)
        if kind == "mask":
            image = lesion(height, width, trial)
        elif kind == "noise":
            image = rng.integers(0, 256, (height, width), dtype=np.uint8)
        else:
            image = (lesion(height, width, trial) // 255 * rng.integers(1, 256)).astype(np.uint8)
            image[rng.random((height, width)) < 0.05] = rng.integers(0, 256)
        data = encode_png(image, rng.integers(0, 5, height))
        decoded = decode_grey8_png(data)
        assert decoded is not None
        np.testing.assert_array_equal(decoded, image)
        np.testing.assert_array_equal(decoded, pillow_pixels(data))


@pytest.mark.parametrize("name", FILTERS)
def test_each_filter_alone_on_a_mask(always_fast, name):
    image = lesion(37, 53, seed=3)
    image[5, :7] = 128  # a grey ramp start and a lone odd value exercise Average's convergence
    image[20, 40] = 1
    decoded = decode_grey8_png(encode_png(image, [FILTERS[name]] * 37))
    np.testing.assert_array_equal(decoded, image)


def test_average_rows_that_drift_towards_the_row_above_without_residuals(always_fast):
    """Average's prediction moves while the residual stays 0: runs that are not constant."""
    image = np.full((3, 40), 200, np.uint8)
    value = 0
    for column in range(40):
        image[1, column] = value = (value + 200) >> 1 if column else 0
    image[2, 10:] = 9  # converges from 9 towards 200 after an edge in the middle of a row
    for column in range(11, 40):
        image[2, column] = (int(image[2, column - 1]) + 200) >> 1
    data = encode_png(image, [0, 3, 3])
    assert decode_grey8_png(data) is not None
    np.testing.assert_array_equal(decode_grey8_png(data), image)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (97, 131), (480, 641)])
def test_pillow_written_masks_take_the_fast_path_with_pillows_pixels(tmp_path, shape):
    image = lesion(*shape, seed=sum(shape))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    decoded = decode_grey8_png(buffer.getvalue())
    assert decoded is not None  # default limits: a plain mask is decoded here
    np.testing.assert_array_equal(decoded, image)


def _rgb(image):
    buffer = io.BytesIO()
    Image.fromarray(np.stack([image] * 3, -1)).save(buffer, format="PNG")
    return buffer.getvalue()


def _mode(mode):
    def save(image):
        buffer = io.BytesIO()
        Image.fromarray(image).convert(mode).save(buffer, format="PNG")
        return buffer.getvalue()
    return save


LEFT_TO_PILLOW = {
    "RGB": _rgb,
    "1-bit": _mode("1"),
    "palette": _mode("P"),
    "16-bit": lambda image: encode_png(image, [0] * image.shape[0], ihdr_tail=b"\x10\x00\x00\x00\x00"),
    "interlaced": lambda image: encode_png(image, [0] * image.shape[0], ihdr_tail=b"\x08\x00\x00\x00\x01"),
    "small window": lambda image: encode_png(image, [1] * image.shape[0], wbits=9),
    "chunk after image": lambda image: encode_png(image, [1] * image.shape[0],
                                                  after_image=_chunk(b"tEXt", b"k\x00v")),
    "no IEND": lambda image: encode_png(image, [1] * image.shape[0])[:-12],
    "truncated": lambda image: encode_png(image, [1] * image.shape[0])[:-40],
    "bad filter byte": lambda image: _bad_filter(image),
    "extra rows": lambda image: _extra_rows(image),
    "not a PNG": lambda image: b"GIF89a" + bytes(100),
    "noise (busy)": lambda image: encode_png(
        np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint8), [1] * image.shape[0]),
}


def _bad_filter(image):
    height, width = image.shape
    stream = zlib.compress(bytes([5]) + _filter_rows(image, np.ones(height, int))[1:])
    body = struct.pack(">II", width, height) + b"\x08\x00\x00\x00\x00"
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", body) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b""))


def _extra_rows(image):
    taller = np.concatenate([image, image[:3]])
    data = encode_png(taller, [1] * taller.shape[0])
    return data.replace(struct.pack(">II", image.shape[1], taller.shape[0]),
                        struct.pack(">II", image.shape[1], image.shape[0]), 1)


def _before_image(image, extra: bytes) -> bytes:
    """A valid PNG of ``image`` with ``extra`` chunks between IHDR and IDAT."""
    data = encode_png(image, [0] * image.shape[0])
    header_end = 8 + 25
    return data[:header_end] + extra + data[header_end:]


def _fixed_huffman_symbol_286() -> bytes:
    """One zero row whose zlib stream uses length symbol 286: libdeflate decodes it, zlib refuses."""
    bits = [1, 1, 0]  # last block, fixed Huffman codes
    for code, length in ((0x30, 8), (0xC0 + 286 - 280, 8), (0, 5), (0, 7)):  # literal 0, len 286, dist 1, end
        bits += [(code >> i) & 1 for i in reversed(range(length))]
    bits += [0] * (-len(bits) % 8)
    block = bytes(sum(bits[i + j] << j for j in range(8)) for i in range(0, len(bits), 8))
    stream = b"\x78\x9c" + block + struct.pack(">I", zlib.adler32(bytes(259)))
    body = struct.pack(">II", 258, 1) + b"\x08\x00\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", body) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


LEFT_TO_PILLOW.update({
    "animation frame control before the image": lambda image: _before_image(
        image, _chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, image.shape[1], 2, 0, 0, 1, 10, 0, 0))),
    "second IHDR": lambda image: _before_image(
        image, _chunk(b"IHDR", struct.pack(">II", image.shape[1], image.shape[0] + 1) + b"\x08\x00\x00\x00\x00")),
    "IEND before the image": lambda image: _before_image(image, _chunk(b"IEND", b"")),
    "stream zlib refuses": lambda image: _fixed_huffman_symbol_286(),
})


def test_harmless_chunks_before_the_image_keep_the_fast_path():
    image = lesion(30, 40, seed=1)
    notes = _chunk(b"gAMA", struct.pack(">I", 45455)) + _chunk(b"tEXt", b"Software\x00glmed")
    np.testing.assert_array_equal(decode_grey8_png(_before_image(image, notes)), image)


@pytest.mark.parametrize("kind", LEFT_TO_PILLOW)
def test_anything_but_a_plain_complete_grey_png_is_left_to_pillow(kind):
    assert decode_grey8_png(LEFT_TO_PILLOW[kind](lesion(64, 80, seed=5))) is None


def _pillow_header_is_grey(data: bytes) -> bool:
    """What the scorer checks before the fast path: Pillow opens the file as an 8-bit grey PNG."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format == "PNG" and image.mode == "L"
    except Exception:  # noqa: BLE001 - any failure to open means the fast path is not tried
        return False


def test_damaged_files_are_never_decoded_differently_from_pillow(always_fast):
    """Flip random bytes: the fast path either declines or agrees with a successful Pillow decode."""
    rng = np.random.default_rng(11)
    image = lesion(40, 56, seed=2)
    original = encode_png(image, rng.integers(0, 5, 40))
    decoded_some = 0
    for _ in range(400):
        data = bytearray(original)
        for position in rng.integers(8, len(data), rng.integers(1, 4)):
            data[position] = rng.integers(0, 256)
        if not _pillow_header_is_grey(bytes(data)):
            continue
        fast = decode_grey8_png(bytes(data))
        if fast is None:
            continue
        decoded_some += 1
        np.testing.assert_array_equal(fast, pillow_pixels(bytes(data)))
    assert decoded_some > 0  # some flips land in checksums or unused bits and still decode
