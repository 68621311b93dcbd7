"""Fast exact decoding of 8-bit greyscale PNG masks, for scoring whole submissions quickly.

Decoding a PNG is inflating its compressed rows and undoing each row's filter. Pillow (and
libpng, OpenCV, libspng as shipped) spend nearly all of a mask's decode time in zlib's inflate;
zlib-ng (through imagecodecs) inflates the same stream several times faster and accepts and
refuses exactly the streams zlib does. The filters are then undone with whole-array NumPy
operations that exploit what masks look like: filtered rows are mostly zeros, so the sequential
filters (Sub, Average, Paeth) only need work where a row or the row above it changes.

Pixels of a valid PNG do not depend on the decoder, so the result equals Pillow's exactly. The
fast path is taken only when it is certain to agree with Pillow: a signature, one IHDR for a
non-interlaced 8-bit greyscale image, then only ancillary chunks that cannot change the pixels
(colour, text, time and size notes), consecutive IDAT chunks holding one complete zlib stream
(32 KiB window, no preset dictionary, correct checksum) of exactly the expected size, and IEND.
Anything else -- other modes, interlacing, animation chunks, repeated headers, damaged or
truncated data, extra chunks after the image, rows too busy for the sparse method to pay off --
returns ``None`` so that the caller decodes with Pillow and Pillow's verdict stands. Chunk CRCs
before the image data are left to Pillow's own header parse, which the caller runs first.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

__all__ = ["decode_grey8_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_GREY8 = (8, 0, 0, 0, 0)  # bit depth, colour type, compression, filter method, interlace
#: Chunks allowed between IHDR and the image data: Pillow reads them as notes (or ignores them)
#: and never changes a greyscale image's pixels because of them. Any other chunk (fcTL, a second
#: IHDR, an early IEND, unknown critical chunks, ...) sends the file to Pillow.
_HARMLESS_BEFORE_IMAGE = frozenset({
    b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"tEXt", b"zTXt", b"iTXt", b"tIME", b"bKGD", b"tRNS", b"eXIf",
})
_NONE, _SUB, _UP, _AVERAGE, _PAETH = range(5)
#: Rows with the sequential Average/Paeth filters are walked change by change in Python; above
#: this many changes per pixel the walk would be slower than Pillow, which then decodes instead.
_MAX_CHANGES_PER_PIXEL = 1 / 1000
#: Sub rows are summed sparsely; when more than this share of their 8-byte words is non-zero
#: the image is not mask-like and Pillow decodes it.
_MAX_BUSY_WORDS = 1 / 8


def decode_grey8_png(data: bytes) -> np.ndarray | None:
    """The pixels (rows × columns, uint8) of an 8-bit greyscale PNG, or ``None`` to use Pillow.

    ``None`` means "not decoded here", never "invalid": the caller must then decode with Pillow,
    which accepts or rejects the file as it always would.
    """
    parsed = _image_stream(data)
    if parsed is None:
        return None
    height, width, stream = parsed
    filtered = _inflate(stream, height * (width + 1))
    if filtered is None:
        return None
    return _unfilter(np.frombuffer(filtered, np.uint8).reshape(height, width + 1))


def _image_stream(data: bytes) -> tuple[int, int, bytes] | None:
    """Height, width and the concatenated IDAT data of a plain 8-bit greyscale PNG."""
    if not data.startswith(_SIGNATURE):
        return None
    chunks = _chunks(data)
    first = next(chunks, None)
    if first is None or first[0] != b"IHDR" or len(first[1]) != 13:
        return None
    width, height, *layout = struct.unpack(">IIBBBBB", first[1])
    if tuple(layout) != _IHDR_GREY8 or width == 0 or height == 0:
        return None
    idat, after_image = [], None
    for kind, body in chunks:
        if kind == b"IDAT":
            idat.append(body)
        elif idat:
            after_image = kind
            break
        elif kind not in _HARMLESS_BEFORE_IMAGE:
            return None
    if not idat or after_image != b"IEND":
        return None
    return height, width, b"".join(idat)


def _chunks(data: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """``(type, body)`` of each complete chunk in order; stops at a chunk that runs past the end."""
    position = len(_SIGNATURE)
    while position + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 8 + length
        if end + 4 > len(data):
            return
        yield kind, memoryview(data)[position + 8:end]
        position = end + 4


def _inflate(stream: bytes, size: int) -> bytes | bytearray | None:
    """The inflated zlib ``stream`` when it is complete, valid and exactly ``size`` bytes."""
    import imagecodecs

    if not imagecodecs.ZLIBNG.available:
        return None  # a build of imagecodecs without zlib-ng: Pillow decodes everything
    if len(stream) < 6 or stream[0] != 0x78 or stream[1] & 0x20:
        return None  # a window other than 32 KiB, or a preset dictionary: leave it to zlib
    try:
        inflated = imagecodecs.zlibng_decode(stream, out=size)
    except imagecodecs.ZlibngError:
        return None
    return inflated if len(inflated) == size else None


def _unfilter(rows: np.ndarray) -> np.ndarray | None:
    """Undo the PNG row filters of ``rows`` (filter byte first), one byte per pixel."""
    filters, filtered = rows[:, 0], rows[:, 1:]
    if filters.max() > _PAETH:
        return None
    height, width = filtered.shape
    image = np.empty((height, width), np.uint8)
    plain = np.flatnonzero(filters == _NONE)
    image[plain] = filtered[plain]
    sub = np.flatnonzero(filters == _SUB)
    if sub.size:
        summed = _sum_sub_rows(np.ascontiguousarray(filtered[sub]))
        if summed is None:
            return None
        image[sub] = summed
    budget = _MAX_CHANGES_PER_PIXEL * height * width + height
    above = np.zeros(width, np.uint8)
    for row in np.flatnonzero(filters >= _UP).tolist():
        if row:
            above = image[row - 1]
        if filters[row] == _UP:
            np.add(above, filtered[row], out=image[row])
            continue
        walked = _walk_row(filters[row] == _PAETH, filtered[row], above, image[row], budget)
        if walked is None:
            return None
        budget -= walked
    return image


def _nonzero(flat: np.ndarray) -> np.ndarray | None:
    """Indices of the non-zero bytes of a mostly-zero uint8 vector, or None when it is busy."""
    whole = flat.size - flat.size % 8
    words = np.flatnonzero(flat[:whole].view(np.uint64))
    if words.size > _MAX_BUSY_WORDS * (whole // 8) + 1:
        return None
    candidates = (words[:, None] * 8 + np.arange(8)).ravel()
    tail = np.flatnonzero(flat[whole:]) + whole
    return np.concatenate((candidates[flat[candidates] != 0], tail))


def _sum_sub_rows(rows: np.ndarray) -> np.ndarray | None:
    """Undo the Sub filter (running sum mod 256 along each row) of contiguous ``rows``."""
    count, width = rows.shape
    flat = rows.ravel()
    changes = _nonzero(flat)
    if changes is None:
        return None
    totals = np.cumsum(flat[changes], dtype=np.uint8)
    # Each row starts from zero: subtract the running total reached before the row's first change.
    row_of = changes // width
    starts_row = np.ones(changes.size, bool)
    starts_row[1:] = row_of[1:] != row_of[:-1]
    first = np.flatnonzero(starts_row)
    carried = np.zeros(first.size, np.uint8)
    carried[first > 0] = totals[first[first > 0] - 1]
    values = totals - np.repeat(carried, np.diff(np.append(first, changes.size)))
    # Piecewise constant: a run starts at every row start (value 0) and every change.
    row_starts = np.setdiff1d(np.arange(count) * width, changes, assume_unique=True)
    run_starts = np.concatenate((row_starts, changes))
    run_values = np.concatenate((np.zeros(row_starts.size, np.uint8), values))
    order = np.argsort(run_starts, kind="stable")
    run_starts, run_values = run_starts[order], run_values[order]
    return np.repeat(run_values, np.diff(np.append(run_starts, flat.size))).reshape(count, width)


def _walk_row(paeth: bool, filtered: np.ndarray, above: np.ndarray, out: np.ndarray, budget: float) -> int | None:
    """Undo an Average or Paeth filter into ``out``, giving up on rows with too many changes.

    Returns the number of positions computed, or None (``out`` untouched) when the row has
    more changes than ``budget`` allows.

    Between positions where the filtered byte is non-zero or the row above changes, both
    predictors only depend on the previous output pixel: Paeth then repeats it, Average halves
    the distance to the pixel above until it stops changing. So the row is a few runs of equal
    values, computed one run at a time.
    """
    width = filtered.size
    events = np.union1d(np.flatnonzero(filtered), np.flatnonzero(above[1:] != above[:-1]) + 1)
    if events.size == 0 or events[0] != 0:
        events = np.insert(events, 0, 0)
    if events.size > budget:
        return None
    events_list = events.tolist()
    residuals = filtered[events].tolist()
    ups = above[events].tolist()
    up_lefts = np.where(events > 0, above[np.maximum(events - 1, 0)], 0).tolist()
    ends = events_list[1:] + [width]
    starts, values, left = [], [], 0
    for position, end, residual, up, up_left in zip(events_list, ends, residuals, ups, up_lefts, strict=True):
        left = (residual + (_paeth(left, up, up_left) if paeth else (left + up) >> 1)) & 0xFF
        starts.append(position)
        values.append(left)
        position += 1
        # Up to ``end`` the residual is 0 and the pixel above equals ``up`` (so does its left).
        while not paeth and position < end and (left + up) >> 1 != left:
            left = (left + up) >> 1
            starts.append(position)
            values.append(left)
            position += 1
    out[:] = np.repeat(np.array(values, np.uint8), np.diff(np.append(starts, width)))
    return len(starts)


def _paeth(left: int, up: int, up_left: int) -> int:
    """The PNG Paeth predictor: whichever neighbour is closest to left + up - up_left."""
    estimate = left + up - up_left
    to_left, to_up, to_up_left = abs(estimate - left), abs(estimate - up), abs(estimate - up_left)
    if to_left <= to_up and to_left <= to_up_left:
        return left
    return up if to_up <= to_up_left else up_left
