"""Writers that never leave a half-written file behind: masks as PNG, images as pyramidal TIFF.

Every writer goes through :func:`atomic_path`: the file is written under a temporary name
in the same folder and moved over the target with ``os.replace`` only once complete, so a
crash or an interrupted run leaves the old file (or none), never a truncated one.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from glmed.io.mapped import mapping_of, row_bands

RESAMPLINGS = ("area", "nearest")

IN_MEMORY_LEVEL_BYTES = 16 << 20
"""A memory-mapped image's pyramid level at most this large is copied into memory (see :func:`_every_nth`)."""

RELEASE_BYTES = 64 << 20
"""Bytes of a memory-mapped image read between two releases of its pages."""

TILE_RELEASE_ROWS = 32
"""Rows of a memory-mapped level's tile copied between two releases of its pages: about 4 MB resident at most
(each row maps 64–128 kB around the bytes read)."""


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; move it onto ``path`` if the block succeeds, else delete it.

    The temporary name keeps the target's extensions, for libraries that pick a format by name.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    suffix = name[name.index(".") :] if "." in name.lstrip(".") else ""
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(handle)
    try:
        yield temporary
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_mask_png(
    path: str | os.PathLike, mask: np.ndarray, num_classes: int = 2, palette: np.ndarray | None = None
) -> None:
    """Write a segmentation mask as a PNG, atomically: the one PNG mask writer of glmed.

    - Two classes, no palette: 8-bit single-channel 0 and 255 (the ISIC format; viewers show it).
    - A ``palette``: an RGB PNG with ``palette[class]`` at each pixel (DeepGlobe's colour masks).
    - More classes, no palette: the class indices as 8-bit single-channel values.

    Args:
        path: the PNG to write (ISIC names it ``ISIC_XXXXXXX_segmentation.png``).
        mask: ``H x W`` (or ``H x W x 1``) class indices; for two classes also bool or 0/255.
        num_classes: classes the mask's values are indices of (at most 256 in a PNG).
        palette: ``K x 3`` uint8 RGB colour per class, or None.

    Raises:
        ValueError: naming ``path``, when the mask holds other values or has another shape.
    """
    from PIL import Image

    path = os.fspath(path)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"{path}: a mask must be a non-empty H x W array, got shape {mask.shape}")
    values = np.unique(mask)
    if palette is None and num_classes == 2:
        if mask.dtype == bool or set(values.tolist()) <= {0, 1}:
            pixels = mask.astype(np.uint8) * np.uint8(255)
        elif set(values.tolist()) <= {0, 255}:
            pixels = mask.astype(np.uint8)
        else:
            raise ValueError(f"{path}: a binary mask holds 0/1 or 0/255, found values {values[:10].tolist()}")
        mode = "L"
    else:
        classes = num_classes if palette is None else len(palette)
        if classes > 256 and palette is None:
            raise ValueError(f"{path}: a PNG holds at most 256 classes, got {classes}; write a .tif instead")
        if values.min() < 0 or values.max() >= classes:
            raise ValueError(f"{path}: class indices must be in [0, {classes}), found values {values[:10].tolist()}")
        pixels = mask.astype(np.uint8) if palette is None else np.asarray(palette, dtype=np.uint8)[mask]
        mode = "L" if palette is None else "RGB"
    with atomic_path(path) as temporary:
        Image.fromarray(pixels, mode=mode).save(temporary, format="PNG")


def pyramid(
    image: np.ndarray, levels: int | None = None, tile: int = 256, resampling: str = "area"
) -> list[np.ndarray]:
    """Level 0 and its successive halvings (``ceil(size / 2)`` each), as ``H x W x C`` arrays.

    Args:
        image: ``H x W`` or ``H x W x C``.
        levels: how many levels; by default until the smallest fits in one tile.
        tile: the tile side that decides the default number of levels.
        resampling: ``"area"`` (2 x 2 mean, for images) or ``"nearest"`` (every other
            pixel, for masks and class indices). Nearest levels are views of ``image``, except
            that for a memory-mapped ``image`` the first level of at most
            :data:`IN_MEMORY_LEVEL_BYTES` (and the smaller ones after it) is copied into memory.
    """
    if resampling not in RESAMPLINGS:
        raise ValueError(f"unknown resampling {resampling!r}; choose one of {RESAMPLINGS}")
    image = np.asarray(image)
    image = image[:, :, None] if image.ndim == 2 else image
    if levels is None:
        levels = 1
        while max(-(-s // 2 ** (levels - 1)) for s in image.shape[:2]) > tile:
            levels += 1
    if levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    out = [image]
    mapped = mapping_of(image) is not None
    for level in range(1, levels):
        previous = out[-1]
        if resampling == "nearest":
            stride = 2**level
            first_small = image[::stride, ::stride].nbytes <= IN_MEMORY_LEVEL_BYTES and mapping_of(previous) is not None
            if mapped and first_small:
                out.append(_every_nth(image, stride))  # the first level small enough: copied, in bands
            else:
                out.append(previous[::2, ::2])
            continue
        rows, cols = np.arange(0, previous.shape[0], 2), np.arange(0, previous.shape[1], 2)
        sums = np.add.reduceat(np.add.reduceat(previous, rows, axis=0, dtype=np.float64), cols, axis=1)
        row_counts = np.diff(np.append(rows, previous.shape[0]))
        col_counts = np.diff(np.append(cols, previous.shape[1]))
        means = sums / (row_counts[:, None, None] * col_counts[None, :, None])
        if np.issubdtype(image.dtype, np.integer):
            means = np.rint(means)
        out.append(means.astype(image.dtype))
    return out


def _every_nth(image: np.ndarray, stride: int) -> np.ndarray:
    """``image[::stride, ::stride]`` copied into memory from a memory-mapped ``image``, a band of rows at a time.

    As a view, a deep level of a mapped mask reads one byte in ``stride`` of every row it spans:
    every page of the file, all at once for a level that fits in one tile. Copied band by band,
    with the band's pages released after each (:func:`~glmed.io.mapped.row_bands`), the file
    is read once and never resident whole.
    """
    level = np.empty(image[::stride, ::stride].shape, dtype=image.dtype)
    for band in row_bands(image, RELEASE_BYTES, multiple=stride):  # bands start on a multiple of stride
        level[band.start // stride : -(-band.stop // stride)] = image[band.start : band.stop : stride, ::stride]
    return level


def check_tile(path: str | os.PathLike, tile: int) -> None:
    """Raise a ValueError naming ``path`` unless ``tile`` is a TIFF tile side (a positive multiple of 16)."""
    if tile < 16 or tile % 16:
        raise ValueError(f"{path}: the tile side must be a positive multiple of 16, got {tile}")


def write_pyramidal_tiff(
    path: str | os.PathLike,
    image: np.ndarray,
    levels: int | None = None,
    tile: int = 256,
    compression: str | None = "jpeg",
    resampling: str = "area",
    progress: bool = False,
    *,
    lookup: np.ndarray | None = None,
    colormap: np.ndarray | None = None,
    description: str | None = None,
    mpp: tuple[float, float] | None = None,
) -> None:
    """Write a tiled pyramidal TIFF that both tifffile and OpenSlide (as generic-tiff) read with all levels.

    Levels are written as reduced-resolution pages in the main page chain, not as SubIFDs,
    which OpenSlide does not see. BigTIFF is used when level 0 exceeds 2 GB uncompressed.
    Each level's resolution tags (pixels per centimetre) say its own µm/px when ``mpp`` is given,
    so a viewer's scale bar and :func:`glmed.io.resolution.microns_per_pixel` read it back.

    Args:
        path: the ``.tif`` to write.
        image: ``H x W`` or ``H x W x C`` (C = 1 or 3 for JPEG; uint8 for JPEG). With ``"nearest"``
            resampling the levels are views of it (the small ones copied, see :func:`pyramid`)
            and tiles are written one at a time, so a :class:`numpy.memmap` larger than memory
            streams to disk; its pages are released after each row of tiles, so the file is
            never resident whole.
        levels: number of levels, each half the previous (``ceil``); by default until one tile holds the last.
        tile: tile side, a multiple of 16.
        compression: ``"jpeg"`` (lossy; encoded by ``imagecodecs``), ``"zlib"`` or ``"lzw"`` (lossless), or ``None``.
        resampling: ``"area"`` for images, ``"nearest"`` for masks.
        progress: show a progress bar over the tiles of all levels.
        lookup: a table applied to every tile as it is written (``stored = lookup[value]``), so a
            class-index mask is stored with the values a viewer shows without a second copy of it.
            The levels are resampled before the table is applied: use it with ``"nearest"``.
        colormap: a ``3 x 2**bits`` uint16 TIFF colour map: single-channel values are then indices
            into it (photometric palette), shown as colours by viewers, read as indices by tifffile.
        description: level 0's ImageDescription (e.g. JSON metadata); with it tifffile adds none of its own.
        mpp: ``(rows, cols)`` microns per level-0 pixel, for the resolution tags.
    """
    import tifffile

    path = os.fspath(path)
    image = np.asarray(image)
    channels = image.shape[2] if image.ndim == 3 else 1
    check_tile(path, tile)
    if compression == "jpeg" and (image.dtype != np.uint8 or channels not in (1, 3)):
        raise ValueError(f"{path}: JPEG holds 1 or 3 channels of uint8, got {channels} of {image.dtype}; use zlib")
    if colormap is not None and channels != 1:
        raise ValueError(f"{path}: a colour map needs a single-channel image, got {channels} channels")
    if mpp is not None and not all(math.isfinite(v) and v > 0 for v in mpp):
        raise ValueError(f"{path}: mpp (microns per pixel) must be positive, got {mpp}")
    photometric = "rgb" if channels in (3, 4) else "minisblack" if colormap is None else "palette"
    levels_written = [level if channels > 1 else level[..., 0] for level in pyramid(image, levels, tile, resampling)]
    stored_dtype = image.dtype if lookup is None else np.asarray(lookup).dtype
    bar = None
    if progress:
        from glmed.progress import progress_bar

        total = sum(-(-level.shape[0] // tile) * -(-level.shape[1] // tile) for level in levels_written)
        bar = progress_bar(total=total, desc=f"writing {os.path.basename(path)}", unit="tile", leave=False)
    try:
        with atomic_path(path) as temporary, tifffile.TiffWriter(temporary, bigtiff=image.nbytes > 2**31) as writer:
            for index, level in enumerate(levels_written):
                extra: dict[str, Any] = {}
                if colormap is not None:
                    extra["colormap"] = colormap
                if description is not None:
                    extra["metadata"] = None  # no tifffile JSON: ours is level 0's description
                    if index == 0:
                        extra["description"] = description
                if mpp is not None:
                    extra.update(resolution=_per_centimetre(mpp, image.shape[:2], level.shape[:2]),
                                 resolutionunit="CENTIMETER")
                writer.write(
                    _tiles(level, tile, bar, lookup),
                    shape=level.shape,
                    dtype=stored_dtype,
                    tile=(tile, tile),
                    compression=compression,
                    photometric=photometric,
                    subfiletype=1 if index else 0,
                    **extra,
                )
    finally:
        if bar is not None:
            bar.close()


def _tiles(level: np.ndarray, tile: int, bar: Any = None, lookup: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """The level's tiles in row-major order, copied one at a time (through ``lookup`` when given).

    A memory-mapped or strided level (a mask's nearest-neighbour levels are views) is never
    copied whole. ``bar`` (a progress bar) counts them.
    """
    mapped = mapping_of(level) is not None
    for row in range(0, level.shape[0], tile):
        for col in range(0, level.shape[1], tile):
            if bar is not None:
                bar.update()  # before yielding: the writer does not come back after a level's last tile
            block = level[row : row + tile, col : col + tile]
            block = _copied_releasing(block) if mapped else np.ascontiguousarray(block)
            yield block if lookup is None else lookup[block]


def _copied_releasing(view: np.ndarray) -> np.ndarray:
    """A view of a memory-mapped level copied :data:`TILE_RELEASE_ROWS` rows at a time, its pages released after each.

    Each row of the view is its own row of the file, and a page fault on a mapped file maps the
    pages around it too (the kernel's fault-around: 64–128 kB a row, measured): a tile of a level taken every 8th
    pixel of a 60k-wide mask would leave 4096 rows × 64 kB = 256 MB resident until released.
    """
    copy = np.empty(view.shape, dtype=view.dtype)
    for band in row_bands(view, TILE_RELEASE_ROWS * view[:1].nbytes):  # bands of TILE_RELEASE_ROWS rows
        copy[band] = view[band]
    return copy


def _per_centimetre(mpp: tuple[float, float], size: tuple[int, ...], level: tuple[int, ...]) -> tuple[float, float]:
    """TIFF ``(XResolution, YResolution)`` in pixels per centimetre of a level of ``level`` pixels.

    A level's pixel covers ``size / level`` level-0 pixels along each axis (``ceil`` halvings are
    not exactly 2).
    """
    microns_x = mpp[1] * size[1] / level[1]
    microns_y = mpp[0] * size[0] / level[0]
    return (1e4 / microns_x, 1e4 / microns_y)
