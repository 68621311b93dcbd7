"""Flat raster images (JPEG, PNG, BMP) through Pillow, the decoder under scikit-image's ``imread``.

Pillow is used directly rather than through ``skimage.io.imread`` because glmed needs
what that wrapper hides: the size from the header alone (to refuse decompression bombs
before decoding), and explicit handling of modes it passes through silently (a CMYK JPEG
comes out of it as four channels that look like RGBA).

Modes are returned as: ``L`` 1 channel uint8; ``1`` (bilevel) 1 channel uint8 0/255;
``LA`` 2 channels; ``RGB`` 3; ``RGBA`` 4; ``P`` (palette) expanded to its colours, RGBA when
the palette has transparency, else RGB; ``CMYK``/``YCbCr``/``LAB``/``HSV`` converted to RGB;
``I;16*`` 1 channel uint16; ``I`` int32; ``F`` float32.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from glmed.io.base import DEFAULT_MAX_PIXELS, DecodedReader, ImageFormatError, decoding

if TYPE_CHECKING:
    from PIL import Image as PILImage

_PIL_LOCK = threading.Lock()

_TRAILERS = {"JPEG": (b"\xff\xd9", 4096), "PNG": (b"IEND", 64)}
"""Marker that ends a complete file of the format, and how far from the end to look for it."""

_CONVERT = {
    "1": "L",
    "PA": "RGBA",
    "La": "LA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}
"""Pillow modes converted on decoding, to the mode they become."""

_LAYOUT: dict[str, tuple[int, type[np.generic]]] = {
    "L": (1, np.uint8),
    "LA": (2, np.uint8),
    "RGB": (3, np.uint8),
    "RGBA": (4, np.uint8),
    "I;16": (1, np.uint16),
    "I;16L": (1, np.uint16),
    "I;16B": (1, np.uint16),
    "I;16N": (1, np.uint16),
    "I": (1, np.int32),
    "F": (1, np.float32),
}
"""Channels and dtype of each mode as decoded (after :data:`_CONVERT`)."""


@contextmanager
def _pil_open(path: str) -> Iterator[PILImage.Image]:
    """Open ``path`` with Pillow's own pixel limit lifted (glmed applies its own, configurable one).

    Pillow raises ``DecompressionBombError`` on opening anything above about 179 Mpx, a
    global setting; it is lifted under a lock only while the header is parsed.
    """
    from PIL import Image

    with _PIL_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            image = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    try:
        yield image
    finally:
        image.close()


def _decoded_mode(image: PILImage.Image) -> str:
    mode = image.mode
    if mode == "P":
        return "RGBA" if "transparency" in image.info else "RGB"
    return _CONVERT.get(mode, mode)


class PillowReader(DecodedReader):
    """A JPEG, PNG or BMP file (anything Pillow opens): header read on opening, pixels decoded once on first read."""

    def __init__(self, path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.path = os.fspath(path)
        with decoding(self.path, "open"), _pil_open(self.path) as image:
            width, height = image.size
            mode = _decoded_mode(image)
            fmt = image.format
        if mode not in _LAYOUT:
            raise ImageFormatError(f"{self.path}: Pillow image mode {mode!r} is not supported")
        _check_trailer(self.path, fmt)
        channels, dtype = _LAYOUT[mode]
        self._mode = mode
        super().__init__(self.path, (height, width), channels, dtype, max_pixels)

    def _decode(self) -> np.ndarray:
        with _pil_open(self.path) as image:
            image.load()
            if image.mode != self._mode:
                image = image.convert(self._mode)
            array = np.asarray(image)
        if array.dtype.byteorder not in ("=", "|"):
            array = array.astype(array.dtype.newbyteorder("="))
        return array.reshape(array.shape[:2] + (self.channels,))


def _check_trailer(path: str, fmt: str | None) -> None:
    """Refuse a JPEG or PNG whose end marker is missing: the cheap check for a truncated download."""
    trailer: tuple[bytes, int] | None = _TRAILERS.get(fmt or "")
    if trailer is None:
        return
    marker, window = trailer
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - window))
        tail = handle.read()
    if marker not in tail:
        raise ImageFormatError(f"{path}: the {fmt} file is truncated (no end marker {marker!r} near its end)")
