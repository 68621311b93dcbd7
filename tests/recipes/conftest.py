"""Helpers for the recipe tests: import a script from recipes/, tiny demo settings."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TINY = ["--images", "5", "--image-size", "96", "128", "--split", "3", "1", "1", "--epochs", "1",
        "--global-size", "64", "--patch-size", "64", "--overlap", "8", "--fpn-channels", "8", "--batch-size", "2",
        "--no-progress"]
"""Demo options small enough for a test: three training images of about 100×130, one epoch per stage."""


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_recipe():
    """A function giving the module ``recipes/<name>.py`` (the scripts are not a package)."""
    return _load


@pytest.fixture(scope="session")
def tiny_options():
    return list(TINY)


@pytest.fixture(scope="session")
def repo():
    return REPO
