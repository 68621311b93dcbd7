"""Fixtures for the reader tests: small deterministic images that make misplaced pixels visible."""

from collections.abc import Callable

import numpy as np
import pytest


def pattern(height: int, width: int, channels: int = 3, dtype: type = np.uint8) -> np.ndarray:
    """An image whose every pixel differs from its neighbours (random), so any offset error shows."""
    rng = np.random.default_rng(height * 7919 + width * 31 + channels)
    high = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1
    return rng.integers(0, high, size=(height, width, channels), endpoint=True).astype(dtype)


@pytest.fixture
def make_image() -> Callable[..., np.ndarray]:
    return pattern
