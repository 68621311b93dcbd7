"""Shared test settings: small, deterministic, CPU-only."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

# Tiny tensors gain nothing from threads, and a busy second core makes OpenMP threads wait on
# each other a hundredfold longer; one thread keeps the suite fast and steady.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


# -- ISIC masks and submissions (scoring and `glmed score` tests) --
def blob(shape: tuple[int, int], seed: int, scale: float = 1.0, shift: tuple[float, float] = (0, 0)) -> np.ndarray:
    """A 0/255 lesion-like blob (wobbly ellipse) of ``shape`` (height, width), drawn by Pillow."""
    rng = np.random.default_rng(seed)
    height, width = shape
    angles = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    radius = 1 + sum(rng.uniform(0, 0.1) * np.cos(k * angles + rng.uniform(0, 6.3)) for k in range(2, 6))
    cy, cx = height * (rng.uniform(0.35, 0.65) + shift[0]), width * (rng.uniform(0.35, 0.65) + shift[1])
    ry, rx = height * rng.uniform(0.1, 0.4) * scale, width * rng.uniform(0.1, 0.4) * scale
    image = Image.new("L", (width, height), 0)
    points = list(zip(cx + rx * radius * np.cos(angles), cy + ry * radius * np.sin(angles)))
    ImageDraw.Draw(image).polygon(points, fill=255)
    return np.asarray(image)


def save_mask(path: Path, mask: np.ndarray, mode: str | None = None, **params) -> Path:
    """Write ``mask`` (uint8 H x W) to ``path``, converted to Pillow ``mode`` first when given."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8))
    if mode is not None:
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **params)
    return path


def write_submission(root: Path, cases: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> tuple[Path, Path]:
    """Write ``{image_id: (truth, prediction)}`` as ``root/truth`` and ``root/prediction`` folders."""
    truth_dir, prediction_dir = root / "truth", root / "prediction"
    truth_dir.mkdir(parents=True, exist_ok=True)
    prediction_dir.mkdir(parents=True, exist_ok=True)
    for image_id, (truth, prediction) in cases.items():
        save_mask(truth_dir / f"{image_id}_segmentation.png", truth)
        save_mask(prediction_dir / f"{image_id}_segmentation.png", prediction)
    return truth_dir, prediction_dir


@pytest.fixture
def make_blob() -> Callable[..., np.ndarray]:
    return blob


@pytest.fixture
def make_submission(tmp_path: Path) -> Callable[[Mapping[str, tuple[np.ndarray, np.ndarray]]], tuple[Path, Path]]:
    """Write cases under ``tmp_path``; returns ``(truth_dir, prediction_dir)``."""
    return lambda cases: write_submission(tmp_path, cases)


@pytest.fixture
def save() -> Callable[..., Path]:
    return save_mask
