"""Synthetic ultra-high-resolution images: glmed's built-in sample data.

Dermoscopy-like images (skin-tone texture, vignetting, hairs, lesions with irregular,
finely detailed borders and blotchy internal colour, mostly under 20% foreground as in
ISIC 2018), land-cover-like images with DeepGlobe's seven classes, and aerial images with
buildings (Inria). The writers lay them out exactly as the real datasets are laid out, so
the same loaders, recipes and scorers run on them; nothing is downloaded.

Everything is deterministic by seed. Smooth fields are drawn on coarse grids and
upsampled, so a 6748×4499 image takes seconds and a few full-size float32 arrays.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from skimage.draw import disk, polygon

from glmed.io.labels import DEEPGLOBE_PALETTE
from glmed.io.writers import atomic_path, write_mask_png
from glmed.conventions import Size

CLASS_DICT_NAMES = ("urban_land", "agriculture_land", "rangeland", "forest_land", "water", "barren_land", "unknown")
"""DeepGlobe's class names as its ``class_dict.csv`` spells them, in class-index order."""

SKIN_TONES = np.array([(236, 190, 172), (226, 172, 150), (206, 152, 124), (184, 132, 102), (232, 178, 170)], float)
LESION_COLOURS = np.array([(172, 112, 78), (128, 78, 52), (78, 46, 32), (108, 106, 128)], float)
"""Light brown, brown, dark brown, blue-grey."""
LAND_COLOURS = np.array([(138, 136, 132), (170, 160, 104), (150, 140, 98), (52, 78, 44), (38, 62, 82),
                         (176, 156, 128), (0, 0, 0)], float)
LAND_TEXTURE = np.array([0.22, 0.18, 0.12, 0.25, 0.05, 0.12, 0.0], np.float32)
"""How strongly each class's colour varies (urban blocks and fields vary most, water least)."""
LAND_PRIORS = np.array([0.14, 0.38, 0.14, 0.18, 0.06, 0.10])


# -- fields ---------------------------------------------------------------------------


def _resize(field: np.ndarray, size: Size, mode: str = "bilinear") -> np.ndarray:
    """A ``h×w`` or ``c×h×w`` float field resampled to ``size`` (float32)."""
    tensor = torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32))
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor[None]
    extra = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(tensor, size=(int(size[0]), int(size[1])), mode=mode, **extra)[0]
    return out[0].numpy() if field.ndim == 2 else out.numpy()


def _noise(rng: np.random.Generator, size: Size, coarsest: float, finest: float, persistence: float = 0.5) -> np.ndarray:
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
        field = _resize(field, grid) + amplitude * rng.standard_normal(grid, dtype=np.float32)
    return _resize(field, (height, width))


def _low_res(size: Size, longest: int = 256) -> Size:
    scale = min(1.0, longest / max(size))
    return (max(2, round(size[0] * scale)), max(2, round(size[1] * scale)))


def _curve(rng: np.random.Generator, start: np.ndarray, length: float, bend: float, steps: int = 40) -> np.ndarray:
    """Points along a randomly bending path: a thin hair, a river, a road."""
    angle = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, bend, steps))
    step = length / steps
    return start + np.cumsum(np.stack([np.sin(angle), np.cos(angle)], axis=1) * step, axis=0)


def _stroke(points: np.ndarray, width: float, shape: Size) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel indices of a polyline drawn ``width`` pixels wide (a round brush stamped along it).

    Indices may repeat; all lie inside ``shape``.
    """
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(steps)])
    spots = np.arange(0.0, along[-1] + 1e-9, max(width / 4, 0.5))
    centres = np.stack([np.interp(spots, along, points[:, axis]) for axis in range(2)], axis=1)
    radius = max(width / 2, 0.5)
    reach = int(math.ceil(radius))
    dr, dc = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    brush = (dr * dr + dc * dc) <= radius * radius
    rows = (np.rint(centres[:, 0])[:, None] + dr[brush][None]).ravel().astype(np.int64)
    cols = (np.rint(centres[:, 1])[:, None] + dc[brush][None]).ravel().astype(np.int64)
    keep = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    return rows[keep], cols[keep]


def _checked_size(size: Size) -> Size:
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f"size must be (height, width) of at least 16 pixels each, got {tuple(size)}")
    return (int(size[0]), int(size[1]))


# -- dermoscopy -----------------------------------------------------------------------


def make_dermoscopy_image(size: Size, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """A dermoscopy-like image and its lesion mask.

    Args:
        size: ``(height, width)``.
        seed: the same seed gives the same image, byte for byte.

    Returns:
        ``H×W×3`` uint8 RGB image and ``H×W`` uint8 mask (1 = lesion).
    """
    height, width = _checked_size(size)
    rng = np.random.default_rng(seed)
    low = _low_res((height, width))
    tone = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.05)
    skin = tone[:, None, None] * (1 + 0.05 * _noise(rng, low, low[0] / 2, 4))
    skin[0] *= 1 + 0.04 * _noise(rng, low, low[0] / 3, 8)  # patchy redness
    image = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        image[..., c] = np.clip(_resize(skin[c], (height, width)), 0, 255)
    mask = np.zeros((height, width), np.uint8)
    area = math.exp(rng.uniform(math.log(0.015), math.log(0.4))) * height * width
    centre = np.array([height, width]) * (0.5 + rng.normal(0, 0.08, 2))
    lesions = [(centre, area)]
    for _ in range(rng.choice([0, 1, 2], p=[0.8, 0.15, 0.05])):
        lesions.append((centre + rng.normal(0, 0.25, 2) * [height, width], area * rng.uniform(0.02, 0.1)))
    for centre, area in lesions:
        _paint_lesion(rng, image, mask, centre, area)
    hair_rows, hair_cols = _hairs(rng, (height, width))
    hair_colour = rng.uniform(15, 45) * np.array([1.0, 0.8, 0.7])
    image[hair_rows, hair_cols] = (image[hair_rows, hair_cols] * 0.2 + hair_colour * 0.8).astype(np.uint8)
    # Lighting and skin texture, from pores (a few pixels) to folds (a fortieth of the image).
    factor = _noise(rng, (height, width), max(height, width) / 40, 2.0, persistence=0.8)
    factor *= 0.03
    factor += 1
    factor *= _resize(_vignette(rng, low), (height, width))
    for c in range(3):
        channel = image[..., c] * factor
        image[..., c] = np.clip(channel, 0, 255, out=channel)
    return image, mask


def _vignette(rng: np.random.Generator, low: Size) -> np.ndarray:
    """Lighting falloff on a coarse grid: mild shading, or a dermatoscope's dark round field of view."""
    rows, cols = np.mgrid[0 : low[0], 0 : low[1]].astype(np.float32)
    centre = np.array(low) / 2 + rng.normal(0, 0.03, 2) * np.array(low)
    radius = np.hypot(rows - centre[0], cols - centre[1]) / (max(low) / 2)
    shading = 1.0 - rng.uniform(0.1, 0.35) * radius**2
    if rng.random() < 0.4:  # round field of view, black outside
        edge = rng.uniform(0.95, 1.2)
        shading *= 1.0 / (1.0 + np.exp((radius - edge) / 0.03))
    return shading


def _paint_lesion(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, centre: np.ndarray, area: float) -> None:
    """Blend one lesion into ``image`` (in place) and mark it in ``mask``.

    The border is a level set: distance in a rotated ellipse over a radius with several
    harmonics, plus fractal noise down to a few pixels. Colour mixes light brown, brown,
    dark brown and blue-grey by smooth random weights, darker towards the centre, with
    dark globules. Works inside the lesion's bounding box only.
    """
    height, width = mask.shape
    aspect = rng.uniform(0.6, 1.0)
    major = math.sqrt(area / (math.pi * aspect))
    reach = 1.6 * major
    r0, c0 = max(int(centre[0] - reach), 0), max(int(centre[1] - reach), 0)
    r1, c1 = min(int(centre[0] + reach) + 1, height), min(int(centre[1] + reach) + 1, width)
    if r1 - r0 < 4 or c1 - c0 < 4:
        return
    box = (r1 - r0, c1 - c0)
    rows, cols = np.ogrid[r0:r1, c0:c1]
    turn = rng.uniform(0, np.pi)
    du, dv = (rows - centre[0]).astype(np.float32), (cols - centre[1]).astype(np.float32)
    u = (du * math.cos(turn) + dv * math.sin(turn)) / major
    v = (-du * math.sin(turn) + dv * math.cos(turn)) / (major * aspect)
    theta = np.arctan2(v, u)
    radius = np.ones_like(theta)
    for k in range(2, 8):
        radius += rng.uniform(0, 0.22) / k**0.7 * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    del theta
    distance = np.sqrt(u * u + v * v)
    del u, v
    level = distance / radius
    del radius
    level -= 1
    level += 0.1 * _noise(rng, box, major / 2, max(2.0, major / 150))
    inside = level < 0
    mask[r0:r1, c0:c1] |= inside
    depth = np.clip(-level / rng.uniform(0.08, 0.3), 0, 1)
    del level
    alpha = np.where(inside, 0.3 + 0.65 * depth * depth * (3 - 2 * depth), 0).astype(np.float32)
    del depth
    shade = 1 - 0.35 * np.clip(1 - distance, 0, 1) * rng.uniform(0.3, 1)  # darker towards the centre
    del distance
    weights = np.stack([np.exp(1.8 * _noise(rng, _low_res(box, 64), 8, 2)) for _ in LESION_COLOURS])
    weights[2] *= rng.uniform(0.3, 1.5)
    weights[3] *= rng.uniform(0.0, 0.8)
    colour = np.tensordot(LESION_COLOURS.T.astype(np.float32), weights / weights.sum(axis=0), axes=1)
    for _ in range(rng.poisson(12)):  # globules
        spot = rng.integers(0, box[0]), rng.integers(0, box[1])
        if inside[spot]:
            shade[disk(spot, rng.uniform(0.01, 0.03) * major + 1, shape=box)] *= 0.55
    for c in range(3):
        region = image[r0:r1, c0:c1, c].astype(np.float32)
        region += alpha * (_resize(colour[c], box) * shade - region)
        image[r0:r1, c0:c1, c] = np.clip(region, 0, 255)


def _hairs(rng: np.random.Generator, size: Size) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel indices of dark hairs: thin, gently curving strokes (none on about a third of images)."""
    count = 0 if rng.random() < 0.35 else int(rng.integers(1, 14))
    diagonal = math.hypot(*size)
    strokes = [_stroke(_curve(rng, rng.uniform(0, 1, 2) * size, rng.uniform(0.15, 0.6) * diagonal, 0.05),
                       rng.uniform(1.2, 3.5) * max(1.0, max(size) / 1024), size) for _ in range(count)]
    if not strokes:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate([s[0] for s in strokes]), np.concatenate([s[1] for s in strokes])


# -- land cover and aerial ------------------------------------------------------------


def make_landcover_image(size: Size, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """A land-cover-like satellite image and its class map (DeepGlobe's classes, in order).

    Regions of six classes (``unknown`` is never drawn) with organic borders, rivers and
    roads; urban land has blocky texture, fields patches of crops, forest dense speckle.

    Returns:
        ``H×W×3`` uint8 RGB image and ``H×W`` uint8 class map, indices into :data:`glmed.io.labels.DEEPGLOBE_CLASSES`.
    """
    height, width = _checked_size(size)
    rng = np.random.default_rng(seed)
    work = _low_res((height, width), 1024)
    scores = np.stack([np.log(p) + 1.5 * _noise(rng, work, max(work) / 3, 2) for p in LAND_PRIORS])
    classes = scores.argmax(axis=0).astype(np.uint8)
    for water, count in ((4, rng.choice([0, 1, 2], p=[0.5, 0.35, 0.15])), (0, rng.integers(0, 4))):
        for _ in range(count):
            line = _curve(rng, rng.uniform(0, 1, 2) * work, rng.uniform(0.5, 1.2) * max(work), 0.04 if water else 0.01)
            classes[_stroke(line, max(work) * (0.012 if water else 0.004), work)] = water
    classes = _resize(classes.astype(np.float32), (height, width), mode="nearest").astype(np.uint8)
    return _paint_landcover(rng, classes), classes


def _paint_landcover(rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
    """RGB pixels for a class map: class colour times class-specific texture."""
    size = classes.shape
    longest = max(size)
    blocks = _resize(rng.uniform(-1, 1, _low_res(size, longest / 10)).astype(np.float32), size, mode="nearest")
    fields = _resize(rng.uniform(-1, 1, _low_res(size, 16)).astype(np.float32), size, mode="nearest")
    fine = _noise(rng, size, longest / 50, 1.5)
    amount = LAND_TEXTURE[classes]
    variation = np.where(classes == 0, blocks, np.where(classes == 1, fields, fine * 0.8)) * amount + 0.06 * fine
    tint = _resize(0.05 * _noise(rng, _low_res(size), 64, 4), size)
    image = np.empty(size + (3,), np.uint8)
    for c in range(3):
        image[..., c] = np.clip(LAND_COLOURS[classes, c].astype(np.float32) * (1 + variation + tint), 0, 255)
    return image


def make_aerial_image(size: Size, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """An Inria-like aerial image of land with buildings, and its building mask.

    Returns:
        ``H×W×3`` uint8 RGB image and ``H×W`` uint8 mask (1 = building).
    """
    height, width = _checked_size(size)
    rng = np.random.default_rng(seed)
    image, land = make_landcover_image((height, width), int(rng.integers(2**31)))
    mask = np.zeros((height, width), np.uint8)
    side = max(height, width) / 100
    for _ in range(int(rng.uniform(0.05, 0.3) * height * width / side**2)):
        centre = rng.uniform(0, 1, 2) * (height, width)
        if land[min(int(centre[0]), height - 1), min(int(centre[1]), width - 1)] in (3, 4):
            continue  # no buildings in forest or water
        half = rng.uniform(0.4, 1.6, 2) * side / 2
        turn = rng.uniform(0, np.pi / 2)
        corners = np.array([(-1, -1), (-1, 1), (1, 1), (1, -1)]) * half
        corners = corners @ np.array([[math.cos(turn), math.sin(turn)], [-math.sin(turn), math.cos(turn)]]) + centre
        shadow = polygon(*(corners + side * 0.15).T, shape=(height, width))
        image[shadow] = image[shadow] // 2
        roof = polygon(*corners.T, shape=(height, width))
        image[roof] = np.clip(rng.uniform(60, 200) * rng.uniform(0.85, 1.15, 3), 0, 255).astype(np.uint8)
        mask[roof] = 1
    return image, mask


# -- dataset writers ------------------------------------------------------------------


def write_isic_dataset(
    root: str | os.PathLike,
    n_images: int = 8,
    sizes: Sequence[Size] | None = None,
    size_range: Tuple[int, int] = (540, 768),
    seed: int = 0,
    split: str = "Training",
) -> Path:
    """Write an ISIC 2018 Task 1 folder pair of synthetic dermoscopy images.

    ``ISIC2018_Task1-2_{split}_Input/ISIC_XXXXXXX.jpg`` and
    ``ISIC2018_Task1_{split}_GroundTruth/ISIC_XXXXXXX_segmentation.png`` (0/255 single-channel
    8-bit), plus the ``ATTRIBUTION.txt`` and ``LICENSE.txt`` the real folders hold.

    Args:
        root: folder to write into (created).
        n_images: number of images, named ``ISIC_0000000`` upwards.
        sizes: ``(height, width)`` of each image; else drawn per image: the height (the
            shorter side) in ``size_range``, landscape 4:3 or 3:2 as ISIC images mostly are.
            The default keeps every side above the 508-pixel patch, as in ISIC 2018.
        seed: the same seed writes the same bytes.
        split: ``Training``, ``Validation`` or ``Test``, as in the real folder names.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    images = root / f"ISIC2018_Task1-2_{split}_Input"
    truths = root / f"ISIC2018_Task1_{split}_GroundTruth"

    def write(index: int, rng: np.random.Generator, size: Size) -> None:
        image, mask = make_dermoscopy_image(size, int(rng.integers(2**31)))
        _save(images / f"ISIC_{index:07d}.jpg", image)
        truths.mkdir(parents=True, exist_ok=True)
        write_mask_png(truths / f"ISIC_{index:07d}_segmentation.png", mask)

    _write_all(n_images, sizes, size_range, seed, write, (4 / 3, 3 / 2))
    for folder in (images, truths):
        _save_text(folder / "ATTRIBUTION.txt", "Synthetic images generated by glmed.data.synthetic.\n")
        _save_text(folder / "LICENSE.txt", "Synthetic data: no rights reserved.\n")
    return root


def write_deepglobe_dataset(
    root: str | os.PathLike,
    n_images: int = 4,
    sizes: Sequence[Size] | None = None,
    size_range: Tuple[int, int] = (512, 512),
    seed: int = 0,
) -> Path:
    """Write a DeepGlobe land-cover ``train`` folder: ``{id}_sat.jpg`` and colour-coded ``{id}_mask.png``.

    Also writes ``class_dict.csv`` (``name,r,g,b``) beside ``train/``, as the real download
    does. Ids count up from 100; images are square (DeepGlobe's are 2448×2448).

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)

    def write(index: int, rng: np.random.Generator, size: Size) -> None:
        image, classes = make_landcover_image(size, int(rng.integers(2**31)))
        _save(root / "train" / f"{100 + index}_sat.jpg", image)
        _save(root / "train" / f"{100 + index}_mask.png", DEEPGLOBE_PALETTE[classes])

    _write_all(n_images, sizes, size_range, seed, write, (1.0, 1.0))
    rows = "".join(f"{name},{r},{g},{b}\n" for name, (r, g, b) in zip(CLASS_DICT_NAMES, DEEPGLOBE_PALETTE))
    _save_text(root / "class_dict.csv", "name,r,g,b\n" + rows)
    return root


def write_inria_dataset(
    root: str | os.PathLike,
    n_images: int = 2,
    sizes: Sequence[Size] | None = None,
    size_range: Tuple[int, int] = (500, 500),
    seed: int = 0,
) -> Path:
    """Write an Inria Aerial ``train`` folder: ``images/{city}{n}.tif`` RGB and ``gt/{city}{n}.tif`` 0/255.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    cities = ("austin", "chicago", "kitsap", "tyrol-w", "vienna")

    def write(index: int, rng: np.random.Generator, size: Size) -> None:
        image, mask = make_aerial_image(size, int(rng.integers(2**31)))
        name = f"{cities[index % len(cities)]}{index // len(cities) + 1}.tif"
        _save(root / "train" / "images" / name, image)
        _save(root / "train" / "gt" / name, mask * np.uint8(255))

    _write_all(n_images, sizes, size_range, seed, write, (1.0, 1.0))
    return root


def _write_all(
    n_images: int,
    sizes: Sequence[Size] | None,
    size_range: Tuple[int, int],
    seed: int,
    write: Callable[[int, np.random.Generator, Size], None],
    aspects: Tuple[float, float],
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
        size = tuple(sizes[index]) if sizes is not None else (height, round(height * rng.choice(aspects)))
        write(index, rng, size)


def _save(path: Path, array: np.ndarray) -> None:
    """Write an image atomically, by the name's extension: JPEG at quality 95, PNG or TIFF."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        if path.suffix == ".tif":
            import tifffile

            tifffile.imwrite(temporary, array, photometric="rgb" if array.ndim == 3 else "minisblack")
        else:
            Image.fromarray(array).save(temporary, format="JPEG" if path.suffix == ".jpg" else "PNG", quality=95)


def _save_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
