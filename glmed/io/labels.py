"""Masks on disk to class-index arrays, validated: labels are class indices from the moment they are read.

- **binary** masks (ISIC, Inria) hold 0/255 or 0/1 (bool too) and become 0 = background,
  1 = foreground. A grey mask saved as RGB (three equal channels) is accepted; an alpha
  channel is ignored. Any other value is an error naming the file and the values found,
  never a silent threshold (a 0/1 mask read as 0/255 would score as empty).
- **deepglobe** masks are colour-coded with the 7-class palette below. As the DeepGlobe
  land-cover release notes, their values are not exactly 0/255, so each channel is
  thresholded at 128 first; a colour outside the palette after that (pure red) is an error.
"""

from __future__ import annotations

import numpy as np

DEEPGLOBE_CLASSES: tuple[str, ...] = ("urban", "agriculture", "rangeland", "forest", "water", "barren", "unknown")
"""DeepGlobe land-cover classes, in class-index order."""

DEEPGLOBE_PALETTE = np.array(
    [[0, 255, 255], [255, 255, 0], [255, 0, 255], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]], dtype=np.uint8
)
"""RGB colour of each DeepGlobe class, row ``i`` for class index ``i``."""

LABEL_KINDS = ("binary", "deepglobe")


class LabelError(ValueError):
    """A mask that cannot be turned into class indices; the message starts with its file's name."""


def mask_to_index(mask: np.ndarray, kind: str, name: str = "<array>") -> np.ndarray:
    """A mask as read from its file, as ``H x W`` uint8 class indices.

    Args:
        mask: ``H x W`` or ``H x W x C`` as a reader returns it.
        kind: ``"binary"`` or ``"deepglobe"`` (see the module docstring).
        name: the mask's file, for error messages.
    """
    if kind == "binary":
        return binary_to_index(mask, name)
    if kind == "deepglobe":
        return deepglobe_to_index(mask, name)
    raise ValueError(f"unknown label kind {kind!r}; choose one of {LABEL_KINDS}")


def binary_to_index(mask: np.ndarray, name: str = "<array>") -> np.ndarray:
    """A 0/255, 0/1 or bool mask as uint8 0/1; any other value raises :class:`LabelError` listing them."""
    mask = _grey(np.asarray(mask), name)
    values, counts = _value_counts(mask)
    found = set(values.tolist())
    if found <= {0, 1}:
        return mask.astype(np.uint8)
    if found <= {0, 255}:
        return (mask == 255).astype(np.uint8)
    raise LabelError(f"{name}: a binary mask holds 0/255 or 0/1, found values {_describe(values, counts)}")


def deepglobe_to_index(mask: np.ndarray, name: str = "<array>", threshold: int = 128) -> np.ndarray:
    """A DeepGlobe colour-coded mask as uint8 indices into :data:`DEEPGLOBE_CLASSES`.

    Raises:
        LabelError: for a mask that is not RGB, or for colours outside the palette (listed with pixel counts).
    """
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.shape[2] not in (3, 4):
        raise LabelError(f"{name}: a DeepGlobe mask is colour-coded RGB, got shape {mask.shape}")
    bits = mask[..., :3] >= threshold
    codes = (
        (bits[..., 0].astype(np.uint8) << 2) | (bits[..., 1].astype(np.uint8) << 1) | bits[..., 2].astype(np.uint8)
    )
    palette_codes = (
        (DEEPGLOBE_PALETTE[:, 0] // 255) * 4 + (DEEPGLOBE_PALETTE[:, 1] // 255) * 2 + DEEPGLOBE_PALETTE[:, 2] // 255
    )
    lookup = np.full(8, 255, dtype=np.uint8)
    lookup[palette_codes] = np.arange(len(DEEPGLOBE_PALETTE), dtype=np.uint8)
    counts = np.bincount(codes.ravel(), minlength=8)
    stray = [code for code in range(8) if counts[code] and lookup[code] == 255]
    if stray:
        colours = ", ".join(
            f"{((c >> 2) & 1) * 255, ((c >> 1) & 1) * 255, (c & 1) * 255} ({counts[c]} px)" for c in stray
        )
        raise LabelError(
            f"{name}: colours outside the DeepGlobe palette after thresholding at {threshold}: {colours}; "
            f"expected {dict(zip(DEEPGLOBE_CLASSES, map(tuple, DEEPGLOBE_PALETTE.tolist()), strict=True))}"
        )
    return lookup[codes]


def index_to_deepglobe(index: np.ndarray) -> np.ndarray:
    """DeepGlobe class indices (``H x W``) back to the colour-coded ``H x W x 3`` uint8 mask."""
    index = np.asarray(index)
    if index.size and (index.min() < 0 or index.max() >= len(DEEPGLOBE_PALETTE)):
        raise ValueError(
            f"DeepGlobe class indices are 0..{len(DEEPGLOBE_PALETTE) - 1}, got {index.min()}..{index.max()}"
        )
    return DEEPGLOBE_PALETTE[index]


def _grey(mask: np.ndarray, name: str) -> np.ndarray:
    """The single channel of a grey mask, ignoring alpha and accepting equal RGB channels."""
    if mask.ndim == 3 and mask.shape[2] in (2, 4):
        mask = mask[..., :-1]
    if mask.ndim == 3 and mask.shape[2] == 3:
        if not ((mask[..., 0] == mask[..., 1]).all() and (mask[..., 0] == mask[..., 2]).all()):
            raise LabelError(f"{name}: a binary mask must be grey, got colour (RGB channels differ)")
        mask = mask[..., 0]
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise LabelError(f"{name}: a mask must be H x W, got shape {mask.shape}")
    return mask


def _value_counts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if mask.dtype in (np.uint8, np.bool_):
        counts = np.bincount(mask.ravel().view(np.uint8) if mask.dtype == np.bool_ else mask.ravel(), minlength=1)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(mask, return_counts=True)


def _describe(values: np.ndarray, counts: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(f"{v} ({c} px)" for v, c in zip(values[:limit].tolist(), counts[:limit].tolist(), strict=True))
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")
