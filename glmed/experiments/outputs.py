"""What a recipe writes for each test image, and how the written files are scored.

- :class:`IsicSubmission`: ``submission/ISIC_XXXXXXX_segmentation.png`` (8-bit, 0/255, the
  challenge's format), scored by glmed's ISIC 2018 Task 1 scorer — the numbers of the
  official ``isic-challenge-scoring`` — against the test ids' ground truth.
- :class:`ClassMapPredictions`: ``predictions/<id>.png`` as 0/255 masks (Inria) or in the
  dataset's colour palette (DeepGlobe ``<id>_mask.png``), scored by mean IoU over classes.

Both score the files as written, read back from disk, so the scores are those of what a
user would hand in.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from glmed.data.layouts import isic_mask_name
from glmed.io.labels import mask_to_index
from glmed.io.open import open_image
from glmed.io.writers import atomic_path, write_mask_png
from glmed.metrics.validation import MeanIoUMetric, score_table

Scores = tuple[pd.DataFrame, dict[str, float]]
"""Per-image scores (index ``image_id``) and the summary over the test set."""


class IsicSubmission:
    """ISIC 2018 Task 1 submission files, scored with :func:`glmed.metrics.isic.score_submission`.

    The scorer reads ground truth from a folder in the ISIC layout; the test images are a
    subset of the challenge's training folder, so ``RUN_DIR/test_truth`` is filled with
    links to (or, across file systems, copies of) the test ids' masks only.
    """

    folder = "submission"
    headline = "threshold_jaccard"

    def path(self, folder: Path, image_id: str) -> Path:
        """Where an image's mask goes in ``folder``: the challenge's ``ISIC_XXXXXXX_segmentation.png``."""
        return folder / isic_mask_name(image_id)

    def write(self, path: Path, mask: np.ndarray) -> None:
        """Write a class map as the challenge's 8-bit 0/255 PNG (any non-zero class is lesion)."""
        write_mask_png(path, np.asarray(mask) != 0)

    def score(self, run_dir: Path, test: pd.DataFrame, folder: Path) -> Scores:
        """Score ``folder`` with the ISIC scorer against the test ids' masks, linked into ``run_dir/test_truth``."""
        from glmed.metrics.isic import score_submission

        truth_dir = run_dir / "test_truth"
        truth_dir.mkdir(parents=True, exist_ok=True)
        wanted = {isic_mask_name(row.image_id): row.label_path for row in test.itertuples()}
        for stale in set(os.listdir(truth_dir)) - set(wanted):
            (truth_dir / stale).unlink()
        for name, source in wanted.items():
            _link_or_copy(Path(source), truth_dir / name)
        per_image = score_submission(truth_dir, folder)
        return per_image, dict(per_image.attrs["summary"])


class ClassMapPredictions:
    """Class maps as images, scored by mean IoU over the whole test set.

    Args:
        metric: the mean-IoU metric (class names, ignored class).
        label_kind: how truth masks encode classes (``"binary"`` or ``"deepglobe"``).
        palette: ``K×3`` RGB colour per class to write colour PNGs (DeepGlobe); None writes
            0/255 single-channel masks (binary datasets).
        suffix: appended to the image id to name the file (DeepGlobe: ``"_mask"``).
    """

    folder = "predictions"
    headline = "miou"

    def __init__(self, metric: MeanIoUMetric, label_kind: str, palette: np.ndarray | None = None,
                 suffix: str = "") -> None:
        self.metric, self.label_kind, self.palette, self.suffix = metric, label_kind, palette, suffix

    def path(self, folder: Path, image_id: str) -> Path:
        """Where an image's class map goes in ``folder``: ``<id><suffix>.png``."""
        return folder / f"{image_id}{self.suffix}.png"

    def write(self, path: Path, mask: np.ndarray) -> None:
        """Write a class map in the palette's colours, or as a 0/255 mask without a palette."""
        mask = np.asarray(mask)
        write_mask_png(path, mask != 0 if self.palette is None else mask, palette=self.palette)

    def score(self, run_dir: Path, test: pd.DataFrame, folder: Path) -> Scores:
        """Read the written maps back and score them against the truth by mean IoU over the test set."""
        counts = [self.metric.measure(_read_classes(row.label_path, self.label_kind),
                                      _read_classes(self.path(folder, row.image_id), self.label_kind))
                  for row in test.itertuples()]
        table = score_table(self.metric, counts, index=pd.Index(test["image_id"].tolist(), name="image_id"))
        return table, {**table.attrs["summary"], "images": len(counts)}


def _read_classes(path: str | os.PathLike, kind: str) -> np.ndarray:
    with open_image(path) as reader:
        return mask_to_index(reader.read((0, 0) + reader.size), kind, reader.name)


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source``, or a copy where links cannot be made."""
    if target.exists():
        if target.samefile(source):
            return
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        with atomic_path(target) as temporary:
            shutil.copyfile(source, temporary)
