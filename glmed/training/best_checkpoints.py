"""A run's best few checkpoints by validation score, kept for a checkpoint ensemble.

``checkpoints/best.pt`` holds the single best epoch. With ``keep_best=K`` (the recipes'
``--keep-best K``) a run also keeps the weights of its K best validated epochs under
``checkpoints/top/`` and lists them, best first, with their scores in ``checkpoints/top.json``;
:func:`load_checkpoints` reads them back for :func:`glmed.predict`, which averages a list of
models' probabilities (:mod:`glmed.models.ensemble`).

Ranking is the one that picks ``best.pt``: full-pipeline scores above the global branch's own
(``coarse``) ones, which measure something else, then the higher score; a tie keeps the earlier
epoch. Epochs that were not validated are not candidates. Each new entry's weights are written
before the list names them and an evicted entry's file is removed after the list no longer does,
both atomically, so a run killed at any moment leaves a list whose every file is whole, and a
resumed run, validating the killed epoch again, replaces its entry rather than adding a second.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from glmed.io.writers import atomic_path
from glmed.models.checkpoint import load_model
from glmed.models.glnet import GLNet

TOP_FOLDER = "top"
"""Folder under ``RUN_DIR/checkpoints`` holding the kept epochs' weights."""

TOP_INDEX = "top.json"
"""File under ``RUN_DIR/checkpoints`` listing them, best first."""

_KINDS = {"coarse": 0, "full": 1}


class BestCheckpoints:
    """The K best validated epochs of a run folder, on disk.

    Args:
        root: the run folder (``RUN_DIR``).
        keep: how many to keep (at least 1).
    """

    def __init__(self, root: str | os.PathLike, keep: int) -> None:
        if int(keep) != keep or keep < 1:
            raise ValueError(f"keep_best must be a whole number >= 1, got {keep}")
        self.root, self.keep = Path(root), int(keep)
        self.folder = self.root / "checkpoints" / TOP_FOLDER
        self.index = self.root / "checkpoints" / TOP_INDEX

    def entries(self) -> list[dict[str, Any]]:
        """The kept epochs, best first: ``{"file", "score", "kind", "stage", "epoch"}``.

        ``file`` is relative to ``RUN_DIR/checkpoints``.
        """
        if not self.index.is_file():
            return []
        return list(json.loads(self.index.read_text())["checkpoints"])

    def offer(self, score: float, kind: str, stage: str, epoch: int, save: Callable[[Path], None]) -> bool:
        """Keep this epoch if it ranks among the best ``keep``; ``save(path)`` writes its checkpoint.

        Returns whether it was kept.
        """
        if kind not in _KINDS:
            raise ValueError(f"a validated epoch is 'full' or 'coarse', got {kind!r}")
        entries = [entry for entry in self.entries() if (entry["stage"], entry["epoch"]) != (stage, epoch)]
        name = f"{TOP_FOLDER}/{stage}-epoch{epoch:03d}.pt"
        candidate = {"file": name, "score": float(score), "kind": kind, "stage": stage, "epoch": int(epoch)}
        ranked = sorted([*entries, candidate], key=_rank)  # stable: an equal later epoch ranks after
        kept = ranked[: self.keep]
        if candidate not in kept:
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        save(self.root / "checkpoints" / name)
        with atomic_path(self.index) as temporary:
            Path(temporary).write_text(json.dumps({"keep": self.keep, "checkpoints": kept}, indent=1))
        listed = {entry["file"] for entry in kept}
        for path in self.folder.glob("*.pt"):  # the evicted, and any a killed run saved but never listed
            if f"{TOP_FOLDER}/{path.name}" not in listed:
                path.unlink(missing_ok=True)
        return True


def _rank(entry: dict[str, Any]) -> tuple[int, float]:
    return (-_KINDS[entry["kind"]], -float(entry["score"]))


def load_checkpoints(
    run_dir: str | os.PathLike, best: int | None = None, map_location: str | torch.device = "cpu"
) -> list[GLNet]:
    """The networks of a run's ``best`` best validated epochs, best first, for :func:`glmed.predict`.

    ``glmed.predict(glmed.load_checkpoints(run, best=3), image)`` averages their probabilities.

    Args:
        run_dir: a recipe's run folder (``RUN_DIR``, with ``checkpoints/``).
        best: how many; 1 reads ``checkpoints/best.pt`` alone, as any run has; more need a run
            trained with ``keep_best`` (``--keep-best``) at least that large; None: every kept one.
        map_location: where the weights are loaded.

    Raises:
        ValueError: the run kept fewer checkpoints than asked for (the message says how many it has).
    """
    return [load_model(path, map_location) for path in kept_checkpoint_files(run_dir, best)]


def kept_checkpoint_files(run_dir: str | os.PathLike, best: int | None = None) -> list[Path]:
    """The files :func:`load_checkpoints` reads for ``best`` (see there), best first."""
    root = Path(run_dir)
    if best is not None and (int(best) != best or best < 1):
        raise ValueError(f"best must be a whole number >= 1, got {best}")
    if best == 1:  # the same epoch as the first kept one; every run has it
        return [root / "checkpoints" / "best.pt"]
    entries = BestCheckpoints(root, 1).entries()
    if not entries:
        raise ValueError(f"{root}: the run kept only its best checkpoint (no checkpoints/{TOP_INDEX}); train it "
                         "with --keep-best K (keep_best=K) to keep its K best, or ask for best=1")
    if best is not None and len(entries) < best:
        raise ValueError(f"{root}: the run kept its {len(entries)} best checkpoint(s) (checkpoints/{TOP_INDEX}), "
                         f"fewer than the {best} asked for; ask for best={len(entries)} or fewer")
    chosen = entries if best is None else entries[:best]
    return [root / "checkpoints" / entry["file"] for entry in chosen]
