"""Pixel conversions from whatever a file holds to what the networks eat: 8-bit RGB.

Readers return a file's own channels and dtype; datasets call :func:`to_rgb8` on what
they read. The rules, applied in this order:

- **alpha** (grey+alpha, RGBA) is composited over a background, white by default
  (:func:`flatten_alpha`). An opaque pixel is unchanged; a transparent one becomes the
  background, which is what OpenSlide's transparent areas outside the scanned region mean.
- **depth**: bool becomes 0/255; uint8 is kept; uint16 is scaled by the dtype's range
  (``round(v * 255 / 65535)``), not by the image's own min/max, so a value maps to the same
  8-bit value in every image; floats must lie in [0, 1] and are scaled by 255. Any other
  dtype (signed or 32-bit integers, floats outside [0, 1]) is refused: its meaning depends
  on the data, so rescale it yourself.
- **grey** (one channel) is replicated to three.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def flatten_alpha(array: np.ndarray, background: Sequence[float] | None = None) -> np.ndarray:
    """Composite an ``H x W x 2`` (grey+alpha) or ``H x W x 4`` (RGBA) image over ``background``.

    Args:
        array: non-premultiplied image; alpha is scaled by the dtype's maximum (1.0 for floats).
        background: one value per colour channel, in the image's scale; white by default.

    Returns:
        ``H x W x 1`` or ``H x W x 3`` in the input's dtype; other channel counts are returned unchanged.
    """
    if array.ndim != 3 or array.shape[2] not in (2, 4):
        return array
    top = np.iinfo(array.dtype).max if np.issubdtype(array.dtype, np.integer) else 1.0
    colours = array.shape[2] - 1
    back = np.full(colours, top, dtype=np.float64) if background is None else np.asarray(background, np.float64)
    if back.shape != (colours,):
        raise ValueError(f"background needs {colours} value(s), got {tuple(back.shape)}")
    if array[..., -1].min() >= top:  # opaque: nothing to composite
        return array[..., :colours]
    alpha = array[..., -1:].astype(np.float64) / top
    out = array[..., :colours] * alpha + back * (1.0 - alpha)
    if np.issubdtype(array.dtype, np.integer):
        out = np.clip(np.rint(out), 0, top)
    return out.astype(array.dtype)


def to_rgb8(array: np.ndarray, name: str = "<array>") -> np.ndarray:
    """Any image a reader returns as ``H x W x 3`` uint8, by the rules in this module's docstring.

    Args:
        array: ``H x W`` or ``H x W x C`` with C in 1..4.
        name: the image's name (its path) for error messages.

    Raises:
        ValueError: naming ``name``, for a channel count or dtype without a documented conversion.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"{name}: expected a grey, grey+alpha, RGB or RGBA image, got shape {array.shape}")
    array = _to_uint8(flatten_alpha(array), name)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return array


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        low, high = (float(np.nanmin(array)), float(np.nanmax(array))) if array.size else (0.0, 0.0)
        if np.isnan(array).any() or low < 0.0 or high > 1.0:
            raise ValueError(
                f"{name}: a float image must hold values in [0, 1] to be converted to 8 bits, "
                f"found [{low}, {high}]; rescale it first"
            )
        return np.rint(array * 255).astype(np.uint8)
    raise ValueError(
        f"{name}: no conversion to 8 bits for dtype {array.dtype}; glmed converts uint8, uint16, bool and "
        "floats in [0, 1], rescale other data yourself"
    )
