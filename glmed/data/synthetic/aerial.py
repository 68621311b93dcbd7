"""Synthetic land-cover (DeepGlobe-like) and aerial (Inria-like) images and their folder layouts.

Land cover has DeepGlobe's seven classes (``unknown`` never drawn), rivers and roads;
aerial images add buildings on that land and a 0/1 building mask.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.draw import polygon

from glmed.conventions import Size
from glmed.data.synthetic._common import (
    checked_size,
    fractal_noise,
    low_res_size,
    random_curve,
    resize_field,
    save_image,
    save_text,
    stroke_pixels,
    write_all,
)
from glmed.io.labels import DEEPGLOBE_PALETTE

CLASS_DICT_NAMES = ("urban_land", "agriculture_land", "rangeland", "forest_land", "water", "barren_land", "unknown")
"""DeepGlobe's class names as its ``class_dict.csv`` spells them, in class-index order."""
LAND_COLOURS = np.array([(138, 136, 132), (170, 160, 104), (150, 140, 98), (52, 78, 44), (38, 62, 82),
                         (176, 156, 128), (0, 0, 0)], float)
LAND_TEXTURE = np.array([0.22, 0.18, 0.12, 0.25, 0.05, 0.12, 0.0], np.float32)
"""How strongly each class's colour varies (urban blocks and fields vary most, water least)."""
LAND_PRIORS = np.array([0.14, 0.38, 0.14, 0.18, 0.06, 0.10])


def make_landcover_image(size: Size, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A land-cover-like satellite image and its class map (DeepGlobe's classes, in order).

    Regions of six classes (``unknown`` is never drawn) with organic borders, rivers and
    roads; urban land has blocky texture, fields patches of crops, forest dense speckle.

    Returns:
        ``H×W×3`` uint8 RGB image and ``H×W`` uint8 class map, indices into :data:`glmed.io.labels.DEEPGLOBE_CLASSES`.
    """
    height, width = checked_size(size)
    rng = np.random.default_rng(seed)
    work = low_res_size((height, width), 1024)
    scores = np.stack([np.log(p) + 1.5 * fractal_noise(rng, work, max(work) / 3, 2) for p in LAND_PRIORS])
    classes = scores.argmax(axis=0).astype(np.uint8)
    for water, count in ((4, rng.choice([0, 1, 2], p=[0.5, 0.35, 0.15])), (0, rng.integers(0, 4))):
        for _ in range(count):
            line = random_curve(
                rng, rng.uniform(0, 1, 2) * work, rng.uniform(0.5, 1.2) * max(work), 0.04 if water else 0.01
            )
            classes[stroke_pixels(line, max(work) * (0.012 if water else 0.004), work)] = water
    classes = resize_field(classes.astype(np.float32), (height, width), mode="nearest").astype(np.uint8)
    return _paint_landcover(rng, classes), classes


def _paint_landcover(rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
    """RGB pixels for a class map: class colour times class-specific texture."""
    size = classes.shape
    longest = max(size)
    blocks = resize_field(rng.uniform(-1, 1, low_res_size(size, longest / 10)).astype(np.float32), size, mode="nearest")
    fields = resize_field(rng.uniform(-1, 1, low_res_size(size, 16)).astype(np.float32), size, mode="nearest")
    fine = fractal_noise(rng, size, longest / 50, 1.5)
    amount = LAND_TEXTURE[classes]
    variation = np.where(classes == 0, blocks, np.where(classes == 1, fields, fine * 0.8)) * amount + 0.06 * fine
    tint = resize_field(0.05 * fractal_noise(rng, low_res_size(size), 64, 4), size)
    image = np.empty(size + (3,), np.uint8)
    for c in range(3):
        image[..., c] = np.clip(LAND_COLOURS[classes, c].astype(np.float32) * (1 + variation + tint), 0, 255)
    return image


def make_aerial_image(size: Size, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An Inria-like aerial image of land with buildings, and its building mask.

    Returns:
        ``H×W×3`` uint8 RGB image and ``H×W`` uint8 mask (1 = building).
    """
    height, width = checked_size(size)
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
        rows, cols = (corners + side * 0.15).T
        shadow = polygon(rows, cols, shape=(height, width))
        image[shadow] = image[shadow] // 2
        rows, cols = corners.T
        roof = polygon(rows, cols, shape=(height, width))
        image[roof] = np.clip(rng.uniform(60, 200) * rng.uniform(0.85, 1.15, 3), 0, 255).astype(np.uint8)
        mask[roof] = 1
    return image, mask


def write_deepglobe_dataset(
    root: str | os.PathLike,
    n_images: int = 4,
    sizes: Sequence[Size] | None = None,
    size_range: tuple[int, int] = (512, 512),
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
        save_image(root / "train" / f"{100 + index}_sat.jpg", image)
        save_image(root / "train" / f"{100 + index}_mask.png", DEEPGLOBE_PALETTE[classes])

    write_all(n_images, sizes, size_range, seed, write, (1.0, 1.0))
    rows = "".join(f"{name},{r},{g},{b}\n" for name, (r, g, b) in zip(CLASS_DICT_NAMES, DEEPGLOBE_PALETTE, strict=True))
    save_text(root / "class_dict.csv", "name,r,g,b\n" + rows)
    return root


def write_inria_dataset(
    root: str | os.PathLike,
    n_images: int = 2,
    sizes: Sequence[Size] | None = None,
    size_range: tuple[int, int] = (500, 500),
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
        save_image(root / "train" / "images" / name, image)
        save_image(root / "train" / "gt" / name, mask * np.uint8(255))

    write_all(n_images, sizes, size_range, seed, write, (1.0, 1.0))
    return root
