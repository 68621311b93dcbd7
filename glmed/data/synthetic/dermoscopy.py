"""Synthetic dermoscopy images (ISIC 2018-like) and the ISIC Task 1 folder layout.

Skin-tone texture, vignetting or a dermatoscope's round field of view, hairs, and lesions
with irregular, finely detailed borders and blotchy internal colour, mostly under 20%
foreground as in ISIC 2018.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from skimage.draw import disk

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
from glmed.io.writers import write_mask_png

SKIN_TONES = np.array([(236, 190, 172), (226, 172, 150), (206, 152, 124), (184, 132, 102), (232, 178, 170)], float)
LESION_COLOURS = np.array([(172, 112, 78), (128, 78, 52), (78, 46, 32), (108, 106, 128)], float)
"""Light brown, brown, dark brown, blue-grey."""


def make_dermoscopy_image(
    size: Size, seed: int, lesion_fraction: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A dermoscopy-like image and its lesion mask.

    Args:
        size: ``(height, width)``.
        seed: the same seed gives the same image, byte for byte.
        lesion_fraction: the share of the image the lesion covers, in (0, 1): exactly, to the
            pixel, with a single lesion (no satellites), its border level set shifted until it
            encloses that many pixels (a large lesion may run off the image's edges, as in
            ISIC). None (the default) draws the size at random, mostly under 20%, as before:
            images made without it are unchanged, byte for byte.

    Returns:
        ``H×W×3`` uint8 RGB image and ``H×W`` uint8 mask (1 = lesion).
    """
    height, width = checked_size(size)
    if lesion_fraction is not None and not 0 < lesion_fraction < 1:
        raise ValueError(f"lesion_fraction must be in (0, 1), got {lesion_fraction}")
    rng = np.random.default_rng(seed)
    low = low_res_size((height, width))
    tone = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.05)
    skin = tone[:, None, None] * (1 + 0.05 * fractal_noise(rng, low, low[0] / 2, 4))
    skin[0] *= 1 + 0.04 * fractal_noise(rng, low, low[0] / 3, 8)  # patchy redness
    image = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        image[..., c] = np.clip(resize_field(skin[c], (height, width)), 0, 255)
    mask = np.zeros((height, width), np.uint8)
    area = math.exp(rng.uniform(math.log(0.015), math.log(0.4))) * height * width
    centre = np.array([height, width]) * (0.5 + rng.normal(0, 0.08, 2))
    if lesion_fraction is not None:  # the size asked for, painted exactly, alone
        pixels = max(1, round(lesion_fraction * height * width))
        _paint_lesion(rng, image, mask, centre, float(pixels), pixels=pixels)
    else:
        lesions = [(centre, area)]
        for _ in range(rng.choice([0, 1, 2], p=[0.8, 0.15, 0.05])):
            lesions.append((centre + rng.normal(0, 0.25, 2) * [height, width], area * rng.uniform(0.02, 0.1)))
        for centre, area in lesions:
            _paint_lesion(rng, image, mask, centre, area)
    hair_rows, hair_cols = _hairs(rng, (height, width))
    hair_colour = rng.uniform(15, 45) * np.array([1.0, 0.8, 0.7])
    image[hair_rows, hair_cols] = (image[hair_rows, hair_cols] * 0.2 + hair_colour * 0.8).astype(np.uint8)
    # Lighting and skin texture, from pores (a few pixels) to folds (a fortieth of the image).
    factor = fractal_noise(rng, (height, width), max(height, width) / 40, 2.0, persistence=0.8)
    factor *= 0.03
    factor += 1
    factor *= resize_field(_vignette(rng, low), (height, width))
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


def _paint_lesion(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, centre: np.ndarray, area: float,
    pixels: int | None = None,
) -> None:
    """Blend one lesion into ``image`` (in place) and mark it in ``mask``.

    The border is a level set: distance in a rotated ellipse over a radius with several
    harmonics, plus fractal noise down to a few pixels. Colour mixes light brown, brown,
    dark brown and blue-grey by smooth random weights, darker towards the centre, with
    dark globules. Works inside the lesion's bounding box only.

    With ``pixels``, the level set is shifted so that exactly that many pixels are inside
    (ties aside): the drawn shape grows or shrinks a little, and one that the image's edges
    cut still covers its share. It then works in a wider box (3 rather than 1.6 major radii
    around the centre), as the shifted border may reach past the usual one.
    """
    height, width = mask.shape
    aspect = rng.uniform(0.6, 1.0)
    major = math.sqrt(area / (math.pi * aspect))
    reach = 1.6 * major if pixels is None else 3.0 * major
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
    level += 0.1 * fractal_noise(rng, box, major / 2, max(2.0, major / 150))
    if pixels is not None:  # move the border so that exactly ``pixels`` lie inside it
        flat = level.ravel()
        count = min(pixels, flat.size)
        edge = np.partition(flat, count - 1)[count - 1]
        above = flat[flat > edge]
        # halfway to the next level up, so the ``count`` lowest (ties aside) are below zero
        level -= edge + (above.min() - edge) / 2 if above.size else edge + 1
    inside = level < 0
    mask[r0:r1, c0:c1] |= inside
    depth = np.clip(-level / rng.uniform(0.08, 0.3), 0, 1)
    del level
    alpha = np.where(inside, 0.3 + 0.65 * depth * depth * (3 - 2 * depth), 0).astype(np.float32)
    del depth
    shade = 1 - 0.35 * np.clip(1 - distance, 0, 1) * rng.uniform(0.3, 1)  # darker towards the centre
    del distance
    weights = np.stack([np.exp(1.8 * fractal_noise(rng, low_res_size(box, 64), 8, 2)) for _ in LESION_COLOURS])
    weights[2] *= rng.uniform(0.3, 1.5)
    weights[3] *= rng.uniform(0.0, 0.8)
    colour = np.tensordot(LESION_COLOURS.T.astype(np.float32), weights / weights.sum(axis=0), axes=1)
    for _ in range(rng.poisson(12)):  # globules
        spot = rng.integers(0, box[0]), rng.integers(0, box[1])
        if inside[spot]:
            shade[disk(spot, rng.uniform(0.01, 0.03) * major + 1, shape=box)] *= 0.55
    for c in range(3):
        region = image[r0:r1, c0:c1, c].astype(np.float32)
        region += alpha * (resize_field(colour[c], box) * shade - region)
        image[r0:r1, c0:c1, c] = np.clip(region, 0, 255)


def _hairs(rng: np.random.Generator, size: Size) -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices of dark hairs: thin, gently curving strokes (none on about a third of images)."""
    count = 0 if rng.random() < 0.35 else int(rng.integers(1, 14))
    diagonal = math.hypot(*size)
    strokes = [stroke_pixels(random_curve(rng, rng.uniform(0, 1, 2) * size, rng.uniform(0.15, 0.6) * diagonal, 0.05),
                       rng.uniform(1.2, 3.5) * max(1.0, max(size) / 1024), size) for _ in range(count)]
    if not strokes:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate([s[0] for s in strokes]), np.concatenate([s[1] for s in strokes])


def write_isic_dataset(
    root: str | os.PathLike,
    n_images: int = 8,
    sizes: Sequence[Size] | None = None,
    size_range: tuple[int, int] = (540, 768),
    seed: int = 0,
    split: str = "Training",
    generator: Callable[[Size, int], tuple[np.ndarray, np.ndarray]] = make_dermoscopy_image,
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
        size_range: ``(smallest, largest)`` height drawn when ``sizes`` is not given (at least 16).
        seed: the same seed writes the same bytes.
        split: ``Training``, ``Validation`` or ``Test``, as in the real folder names.
        generator: draws one image and its 0/1 mask from ``(size, seed)``: the demo's
            :func:`make_dermoscopy_image`, or
            :func:`~glmed.data.synthetic.make_hard_dermoscopy_image` for the harder benchmark.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    images = root / f"ISIC2018_Task1-2_{split}_Input"
    truths = root / f"ISIC2018_Task1_{split}_GroundTruth"

    def write(index: int, rng: np.random.Generator, size: Size) -> None:
        image, mask = generator(size, int(rng.integers(2**31)))
        save_image(images / f"ISIC_{index:07d}.jpg", image)
        truths.mkdir(parents=True, exist_ok=True)
        write_mask_png(truths / f"ISIC_{index:07d}_segmentation.png", mask)

    write_all(n_images, sizes, size_range, seed, write, (4 / 3, 3 / 2))
    for folder in (images, truths):
        save_text(folder / "ATTRIBUTION.txt", "Synthetic images generated by glmed.data.synthetic.\n")
        save_text(folder / "LICENSE.txt", "Synthetic data: no rights reserved.\n")
    return root
