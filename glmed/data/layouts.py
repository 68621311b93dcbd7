"""Dataset layouts on disk (ISIC 2018 Task 1, DeepGlobe land cover, Inria Aerial), splits and manifests.

The flow is: ``discover(root, kind)`` finds image/mask pairs and returns a table of
``image_id, image_path, label_path``; ``scan_dataset`` opens every header and reports every
problem at once; ``make_split`` adds a seeded ``split`` column (train/val/test) with the
paper's proportions; ``write_manifest`` records it as CSV so later runs read the same split.

Discovery lists every id found on either side. A missing counterpart keeps the path where
it was expected, so the scan can say which file is missing and where it should be.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import numpy as np
import pandas as pd

from glmed.io.base import ImageFormatError
from glmed.io.labels import LabelError, mask_to_index
from glmed.io.open import open_image
from glmed.io.writers import atomic_path

COLUMNS = ("image_id", "image_path", "label_path")
SPLITS = ("train", "val", "test")

PAPER_SPLITS: dict[str, tuple[int, int, int]] = {
    "isic": (2077, 260, 259),
    "deepglobe": (455, 142, 206),
    "inria": (126, 27, 27),
}
"""Train/val/test sizes used in the GLNet paper; scaled to the number of pairs found."""

LABEL_KIND = {"isic": "binary", "deepglobe": "deepglobe", "inria": "binary"}
"""How each dataset's masks encode classes (see :mod:`glmed.io.labels`)."""

ISIC_FOLDERS = {
    "training": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    "validation": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
}
"""Image and ground-truth folder of each ISIC 2018 Task 1 subset, as the challenge distributes them."""

_ISIC_IMAGE = re.compile(r"^(ISIC_\d{7})\.(jpe?g|png)$", re.IGNORECASE)
_ISIC_MASK = re.compile(r"^(ISIC_\d{7})_segmentation\.png$", re.IGNORECASE)


class LayoutError(ValueError):
    """A folder that is not laid out as the dataset expects; says what was expected and what was found."""


@dataclass(frozen=True)
class DatasetProblem:
    """One thing wrong with one file of a dataset."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class DatasetError(ValueError):
    """Every problem a dataset scan found, listed one per line; ``problems`` holds them."""

    def __init__(self, problems: Sequence[DatasetProblem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) found in the dataset:\n{lines}")


def isic_mask_name(image_id: str) -> str:
    """The ISIC 2018 Task 1 file name of an image's mask: ``ISIC_XXXXXXX_segmentation.png``."""
    return f"{image_id}_segmentation.png"


def discover(root: str | os.PathLike, kind: str, **options: object) -> pd.DataFrame:
    """Find the image/mask pairs of a dataset laid out as ``kind`` (``"isic"``, ``"deepglobe"``, ``"inria"``).

    ``options`` go to :func:`find_isic` (``subset``, ``labels``), :func:`find_deepglobe` or
    :func:`find_inria` (``labels``).
    """
    finders: dict[str, Callable[..., pd.DataFrame]] = {
        "isic": find_isic,
        "deepglobe": find_deepglobe,
        "inria": find_inria,
    }
    if kind not in finders:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {sorted(finders)}")
    return finders[kind](root, **options)


def find_isic(root: str | os.PathLike, subset: str = "training", labels: bool = True) -> pd.DataFrame:
    """ISIC 2018 Task 1: each input image paired with its segmentation mask, as the challenge names them.

    Images are ``<root>/ISIC2018_Task1-2_<Subset>_Input/ISIC_XXXXXXX.jpg``, masks
    ``<root>/ISIC2018_Task1_<Subset>_GroundTruth/ISIC_XXXXXXX_segmentation.png``.

    Args:
        root: the folder holding the challenge's folders.
        subset: ``"training"``, ``"validation"`` or ``"test"``.
        labels: whether the ground-truth folder is required; without it ``label_path`` is empty.
    """
    if subset not in ISIC_FOLDERS:
        raise ValueError(f"unknown ISIC subset {subset!r}; choose one of {sorted(ISIC_FOLDERS)}")
    root = _existing_root(root)
    image_dir, mask_dir = (root / name for name in ISIC_FOLDERS[subset])
    expected = [image_dir.name] + ([mask_dir.name] if labels else [])
    if not all((root / name).is_dir() for name in expected):
        raise LayoutError(f"{root}: expected the ISIC 2018 {subset} folders {expected}; found {_listing(root)}")
    images = _matching(image_dir, _ISIC_IMAGE)
    masks = _matching(mask_dir, _ISIC_MASK) if labels else {}
    if not images and not masks:
        raise LayoutError(
            f"{image_dir}: expected images named ISIC_XXXXXXX.jpg (7 digits); found {_listing(image_dir)}"
        )
    return _pairs(
        images,
        masks,
        lambda image_id: image_dir / f"{image_id}.jpg",
        (lambda image_id: mask_dir / isic_mask_name(image_id)) if labels else None,
    )


def find_deepglobe(root: str | os.PathLike, labels: bool = True) -> pd.DataFrame:
    """DeepGlobe land cover: ``<id>_sat.jpg`` beside ``<id>_mask.png`` (colour-coded), anywhere under ``root``."""
    root = _existing_root(root)
    images = _matching_tree(root, re.compile(r"^(.+)_sat\.jpg$", re.IGNORECASE))
    masks = _matching_tree(root, re.compile(r"^(.+)_mask\.png$", re.IGNORECASE)) if labels else {}
    if not images and not masks:
        raise LayoutError(f"{root}: expected files named <id>_sat.jpg with <id>_mask.png; found {_listing(root)}")
    folder = {image_id: path.parent for image_id, path in {**masks, **images}.items()}
    return _pairs(
        images,
        masks,
        lambda image_id: folder[image_id] / f"{image_id}_sat.jpg",
        (lambda image_id: folder[image_id] / f"{image_id}_mask.png") if labels else None,
    )


def find_inria(root: str | os.PathLike, labels: bool = True) -> pd.DataFrame:
    """Inria Aerial: ``<root>/images/<id>.tif`` with ``<root>/gt/<id>.tif`` (0/255 buildings).

    ``root`` may also be the dataset's top folder holding ``train/images`` and ``train/gt``.
    """
    root = _existing_root(root)
    base = root if (root / "images").is_dir() or not (root / "train").is_dir() else root / "train"
    expected = ["images"] + (["gt"] if labels else [])
    if not all((base / name).is_dir() for name in expected):
        raise LayoutError(f"{base}: expected the Inria Aerial folders {expected}; found {_listing(base)}")
    tif = re.compile(r"^(.+)\.tiff?$", re.IGNORECASE)
    images = _matching(base / "images", tif)
    masks = _matching(base / "gt", tif) if labels else {}
    if not images and not masks:
        raise LayoutError(f"{base / 'images'}: expected .tif images; found {_listing(base / 'images')}")
    return _pairs(
        images,
        masks,
        lambda image_id: base / "images" / f"{image_id}.tif",
        (lambda image_id: base / "gt" / f"{image_id}.tif") if labels else None,
    )


def scan_dataset(
    table: pd.DataFrame,
    label_kind: str | None = "binary",
    min_size: int | None = None,
    check_values: bool = True,
) -> pd.DataFrame:
    """Open every image and mask header of ``table`` and report all problems in one :class:`DatasetError`.

    Checks: each file exists and opens (format, corruption, truncation, size limit); the
    image has 1-4 channels; the mask has the image's size; with ``check_values`` the mask is
    decoded and its values checked against ``label_kind`` (``"binary"``, ``"deepglobe"``;
    ``None`` skips masks entirely); with ``min_size`` an image smaller than that on either
    side is reported (glmed otherwise covers it with one patch of its own size).

    Returns:
        a copy of ``table`` with ``height``, ``width`` and ``channels`` of each image.
    """
    _require_columns(table, COLUMNS, "the table")
    problems: list[DatasetProblem] = []
    shapes = []
    for row in table.itertuples(index=False):
        shape = _scan_image(row.image_path, min_size, problems)
        shapes.append(shape)
        if label_kind is not None:
            _scan_label(row.label_path, row.image_path, shape, label_kind, check_values, problems)
    if problems:
        raise DatasetError(problems)
    out = table.copy()
    out[["height", "width", "channels"]] = pd.DataFrame(shapes, index=out.index, dtype="int64")
    return out


def make_split(table: pd.DataFrame, sizes: str | Sequence[int], seed: int = 0) -> pd.DataFrame:
    """Add a ``split`` column (``train``/``val``/``test``) drawn deterministically from ``seed``.

    Args:
        table: pairs from :func:`discover` (any order: rows are sorted by ``image_id`` first).
        sizes: a dataset name for the paper's sizes (:data:`PAPER_SPLITS`), or three counts.
            Counts that add up to the number of rows are used as they are; otherwise they
            are scaled to it (largest remainders), each non-zero split keeping at least one
            row when there are enough.
        seed: the permutation's seed; the same table and seed always give the same split.

    Returns:
        a copy sorted by ``image_id`` with the ``split`` column.
    """
    _require_columns(table, ("image_id",), "the table")
    if table["image_id"].duplicated().any():
        repeated = sorted(table["image_id"][table["image_id"].duplicated()])[:10]
        raise ValueError(f"image ids must be unique, repeated: {repeated}")
    if isinstance(sizes, str) and sizes in PAPER_SPLITS:
        sizes = PAPER_SPLITS[sizes]
    counts = split_counts(len(table), sizes)
    out = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    assigned = np.empty(len(out), dtype=object)
    assigned[np.random.default_rng(seed).permutation(len(out))] = np.repeat(np.array(SPLITS, dtype=object), counts)
    out["split"] = assigned
    return out


def split_counts(total: int, sizes: Sequence[int] | str) -> tuple[int, int, int]:
    """Train/val/test counts adding up to ``total``, in the proportions of ``sizes`` (see :func:`make_split`).

    A string (a dataset name :func:`make_split` did not know) is refused like any other bad ``sizes``.
    """
    if isinstance(sizes, str) or len(sizes) != 3 or any(int(s) != s or s < 0 for s in sizes) or sum(sizes) == 0:
        raise ValueError(f"sizes must be one of {sorted(PAPER_SPLITS)} or three non-negative counts, got {sizes!r}")
    sizes = [int(s) for s in sizes]
    if sum(sizes) == total:
        return (sizes[0], sizes[1], sizes[2])
    exact = [total * s / sum(sizes) for s in sizes]
    counts = [int(np.floor(x)) for x in exact]
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    for i in range(3):
        if sizes[i] and not counts[i] and total >= sum(1 for s in sizes if s):
            counts[max(range(3), key=lambda j: counts[j])] -= 1
            counts[i] = 1
    return (counts[0], counts[1], counts[2])


def write_manifest(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``table`` as CSV, atomically; paths are stored relative to the manifest's folder."""
    _require_columns(table, COLUMNS, "the table")
    folder = Path(path).resolve().parent
    out = table.copy()
    for column in ("image_path", "label_path"):
        out[column] = [_relative(value, folder) for value in out[column]]
    with atomic_path(path) as temporary:
        out.to_csv(temporary, index=False)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest`; paths come back absolute, missing labels as None."""
    table = pd.read_csv(path, dtype={"image_id": str, "image_path": str, "label_path": str})
    _require_columns(table, COLUMNS, os.fspath(path))
    folder = Path(path).resolve().parent
    for column in ("image_path", "label_path"):
        paths = [None if pd.isna(value) else str(folder / value) for value in table[column]]
        table[column] = pd.Series(paths, index=table.index, dtype=object)
    return table


def _scan_image(path: str | None, min_size: int | None, problems: list[DatasetProblem]) -> tuple[int, int, int] | None:
    if not _exists(path, "missing image", problems):
        return None
    try:
        with open_image(path) as reader:
            height, width = reader.size
            channels = reader.channels
    except (ImageFormatError, ImportError, OSError) as error:
        problems.append(DatasetProblem(path, f"unreadable image: {_strip(error, path)}"))
        return None
    if channels > 4:
        problems.append(DatasetProblem(path, f"has {channels} channels; expected grey, grey+alpha, RGB or RGBA"))
    if min_size is not None and min(height, width) < min_size:
        problems.append(DatasetProblem(path, f"is {height} x {width}, smaller than one patch of {min_size} px"))
    return height, width, channels


def _scan_label(
    path: str | None, image_path: str, shape: tuple[int, int, int] | None, kind: str, check_values: bool,
    problems: list[DatasetProblem],
) -> None:
    if not _exists(path, f"missing mask for image {image_path}", problems):
        return
    try:
        with open_image(path) as reader:
            if shape is not None and reader.size != shape[:2]:
                message = f"mask is {reader.size} but its image {image_path} is {shape[:2]}"
                problems.append(DatasetProblem(path, message))
            elif check_values:
                mask_to_index(reader.read((0, 0) + reader.size), kind, path)
    except LabelError as error:
        problems.append(DatasetProblem(path, _strip(error, path)))
    except (ImageFormatError, ImportError, OSError) as error:
        problems.append(DatasetProblem(path, f"unreadable mask: {_strip(error, path)}"))


def _exists(path: str | None, message: str, problems: list[DatasetProblem]) -> TypeGuard[str]:
    """Whether ``path`` names an existing file; records ``message`` as a problem when it does not.

    An empty table cell (None, or NaN as pandas reads it) counts as missing.
    """
    if path is None or (isinstance(path, float) and np.isnan(path)):
        problems.append(DatasetProblem("<no path>", message))
        return False
    if not os.path.isfile(path):
        problems.append(DatasetProblem(path, message))
        return False
    return True


def _strip(error: Exception, path: str) -> str:
    """An error's message without the leading file name (the problem already names it)."""
    text = str(error)
    return text[len(path) + 2 :] if text.startswith(f"{path}: ") else text


def _pairs(
    images: dict[str, Path],
    masks: dict[str, Path],
    image_at: Callable[[str], Path],
    mask_at: Callable[[str], Path] | None,
) -> pd.DataFrame:
    """The table of every id found on either side; a missing file gets the path where it was expected."""
    rows = []
    for image_id in sorted(set(images) | set(masks)):
        image = images.get(image_id) or image_at(image_id)
        mask = (masks.get(image_id) or mask_at(image_id)) if mask_at else None
        rows.append((image_id, str(image), None if mask is None else str(mask)))
    return pd.DataFrame(rows, columns=list(COLUMNS), dtype=object)


def _matching(folder: Path, pattern: re.Pattern) -> dict[str, Path]:
    """``{id: path}`` of the files in ``folder`` whose name matches ``pattern`` (group 1 is the id)."""
    found = {}
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = pattern.match(entry.name)
        if match and entry.is_file():
            found[match.group(1)] = entry
    return found


def _matching_tree(root: Path, pattern: re.Pattern) -> dict[str, Path]:
    """Like :func:`_matching` over every folder under ``root``; an id found twice is a layout error."""
    found: dict[str, Path] = {}
    for folder, _, _ in sorted(os.walk(root)):
        for image_id, path in _matching(Path(folder), pattern).items():
            if image_id in found:
                raise LayoutError(f"{root}: id {image_id!r} is found twice: {found[image_id]} and {path}")
            found[image_id] = path
    return found


def _existing_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset folder not found")
    return root


def _listing(folder: Path, limit: int = 12) -> list[str]:
    entries = sorted(e.name + ("/" if e.is_dir() else "") for e in folder.iterdir()) if folder.is_dir() else []
    return entries[:limit] + ([f"... {len(entries) - limit} more"] if len(entries) > limit else [])


def _relative(value: str | None, folder: Path) -> str | None:
    """``value`` relative to ``folder``; None for an empty cell (None, or NaN as pandas reads it)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return os.path.relpath(Path(value).resolve(), folder)


def _require_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; expected {list(columns)}")
