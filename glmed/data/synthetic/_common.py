"""Helpers shared by the synthetic image generators: smooth random fields, strokes, file writing.

Smooth fields are drawn on coarse grids and upsampled, so a 6748×4499 image takes
seconds and a few full-size float32 arrays. Files are written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from glmed.conventions import Size
from glmed.io.writers import atomic_path

# -- fields ---------------------------------------------------------------------------


def resize_field(field: np.ndarray, size: Size, mode: str = "bilinear") -> np.ndarray:
    """A ``h×w`` or ``c×h×w`` float field resampled to ``size`` (float32)."""
    tensor = torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32))
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor[None]
    extra = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(tensor, size=(int(size[0]), int(size[1])), mode=mode, **extra)[0]
    return out[0].numpy() if field.ndim == 2 else out.numpy()


def fractal_noise(
    rng: np.random.Generator, size: Size, coarsest: float, finest: float, persistence: float = 0.5
) -> np.ndarray:
    """Fractal noise over ``size`` with detail from ``coarsest`` down to ``finest`` pixels.

    Built as a pyramid: a coarse random grid is upsampled by 2 and gets new random detail
    (``persistence`` times the previous amplitude) until its cells are ``finest`` pixels,
    then upsampled to ``size``. The spread is about 0.6 to 0.9, depending on ``persistence``.
    """
    height, width = int(size[0]), int(size[1])
    cells = max(finest, 1.0)
    scale = max(coarsest, cells)
    grid = (max(2, math.ceil(height / scale) + 1), max(2, math.ceil(width / scale) + 1))
    field = rng.standard_normal(grid, dtype=np.float32)
    amplitude = 1.0
    while scale / 2 >= cells and max(grid) < 4 * max(height, width):
        scale /= 2
        amplitude *= persistence
        grid = (grid[0] * 2, grid[1] * 2)
        field = resize_field(field, grid) + amplitude * rng.standard_normal(grid, dtype=np.float32)
    return resize_field(field, (height, width))


def low_res_size(size: Size, longest: int = 256) -> Size:
    scale = min(1.0, longest / max(size))
    return (max(2, round(size[0] * scale)), max(2, round(size[1] * scale)))


def random_curve(
    rng: np.random.Generator, start: np.ndarray, length: float, bend: float, steps: int = 40
) -> np.ndarray:
    """Points along a randomly bending path: a thin hair, a river, a road."""
    angle = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, bend, steps))
    step = length / steps
    return start + np.cumsum(np.stack([np.sin(angle), np.cos(angle)], axis=1) * step, axis=0)


def stroke_pixels(points: np.ndarray, width: float, shape: Size) -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices of a polyline drawn ``width`` pixels wide (a round brush stamped along it).

    Indices may repeat; all lie inside ``shape``.
    """
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(steps)])
    spots = np.arange(0.0, along[-1] + 1e-9, max(width / 4, 0.5))
    centres = np.stack([np.interp(spots, along, points[:, axis]) for axis in range(2)], axis=1)
    radius = max(width / 2, 0.5)
    reach = math.ceil(radius)
    dr, dc = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    brush = (dr * dr + dc * dc) <= radius * radius
    rows = (np.rint(centres[:, 0])[:, None] + dr[brush][None]).ravel().astype(np.int64)
    cols = (np.rint(centres[:, 1])[:, None] + dc[brush][None]).ravel().astype(np.int64)
    keep = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    return rows[keep], cols[keep]


def checked_size(size: Size) -> Size:
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f"size must be (height, width) of at least 16 pixels each, got {tuple(size)}")
    return (int(size[0]), int(size[1]))


# -- writing --------------------------------------------------------------------------


def write_all(
    n_images: int,
    sizes: Sequence[Size] | None,
    size_range: tuple[int, int],
    seed: int,
    write: Callable[[int, np.random.Generator, Size], None],
    aspects: tuple[float, float],
) -> None:
    """Call ``write`` per image with its own generator (seeded by ``seed`` and its index) and size.

    Unless ``sizes`` are given, the height is drawn in ``size_range`` and the width is the
    height times one of ``aspects`` (width : height).
    """
    if n_images < 0 or (sizes is not None and len(sizes) != n_images):
        raise ValueError(f"need n_images >= 0 and one size per image, got {n_images} and {sizes!r}")
    if not 16 <= size_range[0] <= size_range[1]:
        raise ValueError(f"size_range must be (smallest, largest) height, at least 16, got {size_range}")
    for index in range(n_images):
        rng = np.random.default_rng([seed, index])
        height = int(rng.integers(size_range[0], size_range[1] + 1))
        size: Size = sizes[index] if sizes is not None else (height, round(height * rng.choice(aspects)))
        write(index, rng, size)


def save_image(path: Path, array: np.ndarray) -> None:
    """Write an image atomically, by the name's extension: JPEG at quality 95, PNG or TIFF."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        if path.suffix == ".tif":
            import tifffile

            tifffile.imwrite(temporary, array, photometric="rgb" if array.ndim == 3 else "minisblack")
        else:
            Image.fromarray(array).save(temporary, format="JPEG" if path.suffix == ".jpg" else "PNG", quality=95)


def save_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
