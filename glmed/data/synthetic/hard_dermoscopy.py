"""Harder synthetic dermoscopy images: a benchmark where neither the global nor a patch view suffices.

:func:`make_hard_dermoscopy_image` draws what makes real ISIC 2018 images hard, each aimed at
one of GLNet's two views:

* Local confounders that fool a patch seen alone: dark freckle-like spots and hairs on the
  skin outside the lesion, and strong vignetting (dark corners, sometimes a dermatoscope's
  black round field of view). In the downsampled whole image their size and place give them
  away; in a patch they look like lesion.
* Detail that the downsampled whole image loses: fine, ragged lesion borders with thin
  finger-like streaks, and pale channels and granular regression areas inside the lesion.
  The latter are high-pass texture (their 6×6 local mean is zero), so they vanish when the
  image is downsampled 6× and only a full-resolution patch sees that the lesion's inside is
  not uniform.
* Lesion sizes as in ISIC 2018: log-normal, from about 2% to 35% of the image, median about
  10%, so most images are under 20% foreground.

The mask follows the ISIC rule: one connected region without holes (the pale areas inside a
lesion are lesion).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from glmed.conventions import Size
from glmed.data.synthetic._common import (
    checked_size,
    fractal_noise,
    low_res_size,
    random_curve,
    resize_field,
    stroke_pixels,
)
from glmed.data.synthetic.dermoscopy import LESION_COLOURS, SKIN_TONES

_HIGH_PASS_WINDOW = 6
"""Side in pixels (at 1536 pixels across) of the window over which the pale texture averages to zero."""

_ANGLES = 16384
"""Angular resolution of the border's radius table (finer than a pixel at the largest lesions)."""

_REFERENCE_SIDE = 1536.0
"""Fine structures (border streaks, channels, hairs) have their stated widths at this image side."""


def make_hard_dermoscopy_image(size: Size, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A hard dermoscopy-like image and its lesion mask (the harder benchmark's sample).

    Compared with :func:`~glmed.data.synthetic.make_dermoscopy_image`: freckles and more hairs
    outside the lesion, vignetting on every image, ragged borders with thin streaks, pale
    channels and regression areas inside the lesion that a 6× downsampling removes, and
    exactly one lesion, filled, per image.

    Args:
        size: ``(height, width)``, each at least 16.
        seed: the same seed gives the same image, byte for byte.

    Returns:
        ``H×W×3`` uint8 RGB image and ``H×W`` uint8 mask (1 = lesion): one 4-connected region
        without holes.
    """
    height, width = checked_size(size)
    rng = np.random.default_rng(seed)
    unit = max(height, width) / _REFERENCE_SIDE  # pixels per pixel of a 1536-wide image
    canvas = _skin(rng, (height, width))
    mask = np.zeros((height, width), np.uint8)
    _paint_lesion(rng, canvas, mask, unit)
    _paint_freckles(rng, canvas, mask)
    _paint_hairs(rng, canvas, unit)
    # Lighting: skin texture (pores to folds) times a strong vignette, all multiplicative.
    light = fractal_noise(rng, (height, width), max(height, width) / 40, 2.0, persistence=0.8)
    light *= 0.035
    light += 1
    light *= resize_field(_vignette(rng, low_res_size((height, width))), (height, width))
    canvas *= light
    image = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        np.clip(canvas[c], 0, 255, out=canvas[c])
        image[..., c] = canvas[c]
    return image, mask


def _lesion_fraction(rng: np.random.Generator) -> float:
    """The drawn lesion area as a fraction of the image: log-normal, median 11%, within 2% to 35%.

    The mask comes out a little smaller (the image's edge, the ragged border), so over many
    seeds its median is about 10% and about 90% of the images are under 20% foreground.
    """
    return float(np.clip(math.exp(rng.normal(math.log(0.11), 0.65)), 0.02, 0.35))


def _skin(rng: np.random.Generator, size: Size) -> np.ndarray:
    """``3×H×W`` float32 skin: a tone with smooth blotches and patchy redness."""
    low = low_res_size(size)
    tone = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.05)
    skin = tone[:, None, None] * (1 + 0.05 * fractal_noise(rng, low, low[0] / 2, 4))
    skin[0] *= 1 + rng.uniform(0.03, 0.07) * fractal_noise(rng, low, low[0] / 3, 6)  # erythema
    return resize_field(skin.astype(np.float32), size)


def _vignette(rng: np.random.Generator, low: Size) -> np.ndarray:
    """Strong lighting falloff on a coarse grid: corners at 40-70% of the centre, sometimes black.

    The radius is 1 at the corners; a third of the images also get a dermatoscope's round
    field of view, black outside a circle that cuts the corners off.
    """
    rows, cols = np.mgrid[0 : low[0], 0 : low[1]].astype(np.float32)
    centre = np.array(low) / 2 + rng.normal(0, 0.03, 2) * np.array(low)
    radius = np.hypot(rows - centre[0], cols - centre[1]) / (math.hypot(*low) / 2)
    shading = 1.0 - rng.uniform(0.3, 0.6) * radius ** rng.uniform(1.8, 2.6)
    if rng.random() < 0.35:
        edge = rng.uniform(0.8, 0.97)
        shading /= 1.0 + np.exp((radius - edge) / 0.015)
    return shading


def _paint_lesion(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, unit: float) -> None:
    """Draw the lesion's mask and blend its colour and texture into ``canvas`` (both in place).

    The border is the zero level of a distance in a rotated ellipse over a radius with a few
    harmonics and thin streaks, plus fractal noise at mid and fine (1 px) scales. Only the
    largest 4-connected region is kept and its holes are filled, and the colour is painted
    through that final mask, so image and mask agree. Works in the lesion's bounding box.
    """
    height, width = mask.shape
    area = _lesion_fraction(rng) * height * width
    aspect = rng.uniform(0.55, 1.0)
    major = max(math.sqrt(area / (math.pi * aspect)), 3.0)
    centre = np.array([height, width]) * np.clip(0.5 + rng.normal(0, 0.08, 2), 0.3, 0.7)
    reach = 1.9 * major
    r0, c0 = max(int(centre[0] - reach), 0), max(int(centre[1] - reach), 0)
    r1, c1 = min(int(centre[0] + reach) + 1, height), min(int(centre[1] + reach) + 1, width)
    box = (r1 - r0, c1 - c0)
    rows, cols = np.ogrid[r0:r1, c0:c1]
    turn = rng.uniform(0, np.pi)
    du, dv = (rows - centre[0]).astype(np.float32), (cols - centre[1]).astype(np.float32)
    u = (du * math.cos(turn) + dv * math.sin(turn)) / major
    v = (-du * math.sin(turn) + dv * math.cos(turn)) / (major * aspect)
    theta = np.arctan2(v, u)
    distance = np.sqrt(u * u + v * v)
    del u, v
    radius_table, streak_table = _border_radius(rng, major, unit)
    angle_index = ((theta + np.pi) * (_ANGLES / (2 * np.pi))).astype(np.int64) % _ANGLES
    del theta
    radius = radius_table[angle_index]
    level = distance / radius - 1
    del radius
    level += 0.1 * fractal_noise(rng, box, major / 2, max(2.0, major / 12))
    level += rng.uniform(0.02, 0.05) * fractal_noise(rng, box, max(8.0, major / 8), 1.0, persistence=0.8)
    inside = level < 0
    if not inside.any():  # a lesion too small for its noise: keep its centre pixel
        inside[min(int(centre[0]) - r0, box[0] - 1), min(int(centre[1]) - c0, box[1] - 1)] = True
    inside = _one_filled_region(inside)
    mask[r0:r1, c0:c1] = inside

    # Colour: light brown to dark brown and blue-grey by smooth random weights, darker inwards.
    depth = np.clip(-level / rng.uniform(0.08, 0.3), 0, 1)
    del level
    rim = rng.uniform(0.2, 0.4)  # opacity at the border: some borders are faint
    alpha = np.where(inside, rim + (0.95 - rim) * depth * depth * (3 - 2 * depth), 0).astype(np.float32)
    streaks = np.clip(streak_table[angle_index] * 20, 0, 1)  # streaks are dark to their tips
    del angle_index
    np.maximum(alpha, np.where(inside, 0.85 * streaks, 0), out=alpha)
    del streaks
    alpha *= rng.uniform(0.75, 1.0)
    shade = 1 - rng.uniform(0.1, 0.35) * np.clip(1 - distance, 0, 1)
    del distance
    coarse = low_res_size(box, 64)
    weights = np.stack([np.exp(1.8 * fractal_noise(rng, coarse, 8, 2)) for _ in LESION_COLOURS])
    weights[2] *= rng.uniform(0.3, 1.5)
    weights[3] *= rng.uniform(0.0, 0.8)
    mixed = np.tensordot(LESION_COLOURS.T.astype(np.float32), weights / weights.sum(axis=0), axes=1)
    colour = resize_field(mixed, box) * shade
    del shade

    # Pale texture inside: channels (a network of thin lines) and granular regression areas,
    # high-passed so a 6x downsampling averages them away.
    interior = inside & (depth > 0.15)
    channels = _channel_network(rng, box, unit) * _patches(rng, box, 0.0)
    grains = (rng.random(box, dtype=np.float32) < 0.35) * _patches(rng, box, 0.5)
    texture = rng.uniform(0.6, 1.0) * channels + rng.uniform(0.4, 0.8) * grains
    texture *= interior
    window = max(_HIGH_PASS_WINDOW, round(_HIGH_PASS_WINDOW * unit))
    texture -= ndimage.uniform_filter(texture, window, mode="nearest")
    texture *= interior
    pale = canvas[:, r0:r1, c0:c1].mean(axis=(1, 2)) * rng.uniform(1.0, 1.1) + rng.uniform(0, 15, 3)
    for c in range(3):
        region = canvas[c, r0:r1, c0:c1]
        region += alpha * (colour[c] - region)
        region += texture * (pale[c] - region)


def _border_radius(rng: np.random.Generator, major: float, unit: float) -> tuple[np.ndarray, np.ndarray]:
    """The lesion's radius (1 = the ellipse) at :data:`_ANGLES` angles from -π, and its streaks' part.

    Drawn as tables over angle so the box's pixels only look them up. The radius has lobes
    and thin streaks (pseudopods); a streak is a narrow bump, about 4-10 pixels (at 1536
    across) wide where it leaves the border. The second table is the streaks' share of the radius,
    which makes them dark to their tips.
    """
    theta = np.linspace(-np.pi, np.pi, _ANGLES, endpoint=False)
    radius = np.ones(_ANGLES)
    for k in range(2, 9):
        radius += rng.uniform(0, 0.2) / k**0.8 * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    streaks = np.zeros(_ANGLES)
    for _ in range(rng.poisson(6)):
        offset = np.angle(np.exp(1j * (theta - rng.uniform(-np.pi, np.pi))))
        half_width = rng.uniform(2.0, 5.0) * unit / major  # radians: 2-5 pixels at the border
        streaks += rng.uniform(0.08, 0.3) * np.exp(-((offset / half_width) ** 2))
    return np.maximum(radius + streaks, 0.3).astype(np.float32), streaks.astype(np.float32)


def _one_filled_region(inside: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of ``inside`` with its holes filled (as ISIC masks are).

    A hole is background not 4-connected to the array's edge, as in
    :func:`scipy.ndimage.binary_fill_holes`, found here by one labelling of the background.
    """
    regions, count = ndimage.label(inside)
    if count > 1:
        inside = regions == np.argmax(np.bincount(regions.ravel())[1:]) + 1
    background, _ = ndimage.label(~inside)
    edge = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    return inside | ~np.isin(background, edge)


def _channel_network(rng: np.random.Generator, box: Size, unit: float) -> np.ndarray:
    """Thin curving lines about 1-3 pixels wide, 10-25 pixels apart: zero contours of a smooth field.

    ``|f| / |∇f|`` approximates the distance to the zero contour of the smooth field ``f``,
    so the lines have an even width wherever they run.
    """
    spacing = rng.uniform(10, 25) * unit
    grid = (max(2, math.ceil(box[0] / spacing) + 2), max(2, math.ceil(box[1] / spacing) + 2))
    field = resize_field(rng.standard_normal(grid, dtype=np.float32), box, mode="bicubic")
    gradient_rows, gradient_cols = np.gradient(field)
    slope = np.hypot(gradient_rows, gradient_cols)
    slope += 1e-6
    half_width = rng.uniform(0.6, 1.3) * max(unit, 0.8)
    return np.clip(1 - np.abs(field) / slope / half_width, 0, 1).astype(np.float32)


def _patches(rng: np.random.Generator, box: Size, threshold: float) -> np.ndarray:
    """Smooth 0-1 weights that switch on in blotches (about half the box at threshold 0)."""
    blotches = fractal_noise(rng, low_res_size(box, 64), 12, 3)
    return resize_field(np.clip((blotches - threshold) * 3, 0, 1), box)


def _paint_freckles(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray) -> None:
    """Dark freckle-like spots on the skin, never touching the lesion (so never in its mask).

    Radii 0.3-1.8% of the longest side, soft, irregular edges, lesion-like browns. A spot whose
    surroundings (twice its radius) touch the lesion is not drawn.
    """
    height, width = mask.shape
    count = int(rng.integers(8, 30))
    centres = rng.uniform(0, 1, (count, 2)) * (height, width)
    radii = np.maximum(np.exp(rng.uniform(math.log(0.003), math.log(0.018), count)) * max(height, width), 1.5)
    tones = LESION_COLOURS[rng.integers(0, 3, count)] * rng.uniform(0.6, 1.0, (count, 1))
    for (row, col), radius, tone in zip(centres, radii, tones, strict=True):
        margin = 2 * radius + 2
        s0, t0 = max(int(row - margin), 0), max(int(col - margin), 0)
        s1, t1 = min(int(row + margin) + 1, height), min(int(col + margin) + 1, width)
        if mask[s0:s1, t0:t1].any():
            continue
        reach = radius * 1.4 + 1
        r0, c0 = max(int(row - reach), 0), max(int(col - reach), 0)
        r1, c1 = min(int(row + reach) + 1, height), min(int(col + reach) + 1, width)
        rows, cols = np.ogrid[r0:r1, c0:c1]
        aspect = rng.uniform(0.6, 1.0)
        turn = rng.uniform(0, np.pi)
        du, dv = rows - row, cols - col
        u = (du * math.cos(turn) + dv * math.sin(turn)) / radius
        v = (-du * math.sin(turn) + dv * math.cos(turn)) / (radius * aspect)
        level = np.sqrt(u * u + v * v) - 1 + 0.15 * fractal_noise(rng, (r1 - r0, c1 - c0), radius, 1.0)
        alpha = rng.uniform(0.55, 0.9) * np.clip(-level / 0.25, 0, 1)
        region = canvas[:, r0:r1, c0:c1]
        region += alpha * (tone[:, None, None] - region)


def _paint_hairs(rng: np.random.Generator, canvas: np.ndarray, unit: float) -> None:
    """2-17 dark, gently curving hairs, 1-3.5 pixels wide, anywhere (over skin and lesion)."""
    size = canvas.shape[1:]
    diagonal = math.hypot(*size)
    colour = rng.uniform(15, 45) * np.array([1.0, 0.8, 0.7], np.float32)
    for _ in range(int(rng.integers(2, 18))):
        start = rng.uniform(0, 1, 2) * size
        points = random_curve(rng, start, rng.uniform(0.15, 0.6) * diagonal, 0.05)
        rows, cols = stroke_pixels(points, rng.uniform(1.2, 3.5) * max(unit, 0.7), size)
        for c in range(3):
            canvas[c, rows, cols] = canvas[c, rows, cols] * 0.2 + colour[c] * 0.8
