"""Whole-slide-like images: H&E-stained tissue on glass, with tumour-like regions to segment.

A slide is mostly bright, nearly white glass; tissue lies on it in a few irregular pieces,
pink (eosin) speckled with purple nuclei (haematoxylin); inside the tissue, tumour-like
regions are denser and darker purple. The mask marks those regions (class 1) — what a
pathology model would be asked to find — and everything else (tissue and glass) is 0.
"""

from __future__ import annotations

import numpy as np

from glmed.conventions import Size
from glmed.data.synthetic._common import checked_size, fractal_noise, low_res_size, resize_field

GLASS = np.array([236.0, 234.0, 240.0], dtype=np.float32)
"""Background glass, slightly blue-grey white."""

EOSIN = np.array([226.0, 150.0, 190.0], dtype=np.float32)
"""Stroma and cytoplasm: pink."""

HAEMATOXYLIN = np.array([92.0, 58.0, 140.0], dtype=np.float32)
"""Nuclei: dark purple."""


def make_slide_image(size: Size, seed: int, tissue_fraction: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """A slide-like RGB image and its tumour mask.

    Args:
        size: ``(height, width)`` in pixels.
        seed: everything is drawn from it.
        tissue_fraction: roughly how much of the slide is covered by tissue.

    Returns:
        ``H×W×3`` uint8 image and ``H×W`` uint8 mask (1 = tumour-like region, 0 otherwise).
    """
    height, width = checked_size(size)
    rng = np.random.default_rng(seed)
    low = low_res_size((height, width))
    # tissue: the highest-valued part of a smooth field, so pieces have irregular outlines
    field = fractal_noise(rng, low, max(low) / 2.5, 2.0, 0.55)
    tissue_low = field > np.quantile(field, 1.0 - tissue_fraction)
    # tumour: a second field, only inside tissue, about a fifth of it
    inner = fractal_noise(rng, low, max(low) / 6, 2.0, 0.5)
    tumour_low = tissue_low & (inner > np.quantile(inner[tissue_low], 0.8)) if tissue_low.any() else tissue_low
    tissue = resize_field(tissue_low.astype(np.float32), (height, width)) > 0.5
    tumour = (resize_field(tumour_low.astype(np.float32), (height, width)) > 0.5) & tissue

    nuclei = fractal_noise(rng, (height, width), 8.0, 1.0, 0.8)  # fine speckle of nuclei
    density = np.where(tumour, 0.75, 0.25).astype(np.float32)
    stain = np.clip(density + 0.35 * nuclei, 0.0, 1.0)[..., None]
    tissue_colour = (1 - stain) * EOSIN + stain * HAEMATOXYLIN
    image = np.where(tissue[..., None], tissue_colour, GLASS)
    image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8), tumour.astype(np.uint8)
