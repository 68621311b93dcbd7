"""Checkpoints that a killed run can always resume from: written atomically, loaded safely.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values, so it
loads with ``torch.load(weights_only=True)`` (no arbitrary code runs when a file is opened):

- ``model_class`` and ``model_config`` (JSON text): enough to rebuild the network
  (:func:`load_model`), whatever code wrote the file;
- ``model``: its state dict;
- ``optimizer``: the optimiser's state dict in the "last" checkpoint (None in "best");
- ``position``: ``{"stage_index", "stage", "epoch"}`` — the stage and the number of its
  epochs completed when the file was written;
- ``seed``, ``world_size``, ``stages`` (the schedule as dicts): what made the run, checked
  on resume;
- ``best``: ``{"score", "metric", "stage", "epoch"}`` of the best validation so far;
- ``history``: one dict per finished epoch (the rows of ``metrics.csv``).

The random streams of an epoch are a function of the seed and the position (see
:mod:`glmed.training.runner`), so the position *is* the random state at an epoch's end.

Files are written through :func:`glmed.io.writers.atomic_path`: a kill at any moment leaves
the previous complete file (or none), never a truncated one. A kill can leave the
temporary file behind; :func:`remove_stale_temporaries` clears those when a run resumes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from glmed.io.writers import atomic_path
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.glnet import GLNet

FORMAT = 1
"""Version of the checkpoint layout; bumped when a key changes meaning."""

MODEL_CLASSES = {"GLNet": GLNet, "CoarseToFineGLNet": CoarseToFineGLNet}
"""Model classes a checkpoint can rebuild, by the name it records."""

_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp(\..*)?$")
"""Names :func:`glmed.io.writers.atomic_path` gives its temporary files."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the reason."""


def model_record(model: GLNet) -> dict[str, Any]:
    """The part of a checkpoint that rebuilds ``model``: class name, config JSON, weights (on the CPU)."""
    name = type(model).__name__
    if name not in MODEL_CLASSES:
        raise TypeError(f"cannot checkpoint a {name}; expected one of {sorted(MODEL_CLASSES)}")
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    return {"format": FORMAT, "model_class": name, "model_config": json.dumps(model.config.to_dict()), "model": state}


def save_checkpoint(path: str | os.PathLike, model: GLNet, **fields: Any) -> None:
    """Write ``model`` and ``fields`` (plain values and tensors) to ``path`` atomically.

    Args:
        path: the file; its folder is created.
        model: saved as class name, config JSON and state dict.
        fields: anything else to record (``optimizer``, ``position``, ``best``, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**model_record(model), **fields}
    with atomic_path(path) as temporary:
        torch.save(record, temporary)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a bad file
        raise CheckpointError(f"{path}: not a readable glmed checkpoint ({error})") from error
    if not isinstance(record, dict) or record.get("format") != FORMAT or "model" not in record:
        raise CheckpointError(f"{path}: not a glmed checkpoint of format {FORMAT}")
    return record


def model_from_record(record: Mapping[str, Any]) -> GLNet:
    """The network a checkpoint record describes, with its weights loaded."""
    name = record.get("model_class")
    if name not in MODEL_CLASSES:
        raise CheckpointError(f"checkpoint records model class {name!r}; expected one of {sorted(MODEL_CLASSES)}")
    model = MODEL_CLASSES[name].from_config(json.loads(record["model_config"]))
    model.load_state_dict(record["model"])
    return model


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> GLNet:
    """Rebuild the trained network saved at ``path`` (e.g. ``RUN_DIR/checkpoints/best.pt``).

    The result is in evaluation mode, ready for :func:`glmed.predict`.
    """
    return model_from_record(load_checkpoint(path, map_location)).eval()


def save_model(model: GLNet, path: str | os.PathLike) -> Path:
    """Save a trained network where :func:`load_model` (and ``glmed predict``) can rebuild it.

    The file holds the model's class, its config as JSON and its weights (on the CPU), written
    atomically; it loads with ``torch.load(weights_only=True)``. Returns the path.
    """
    save_checkpoint(path, model)
    return Path(path)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed atomic write left under ``folder``; returns them.

    Only names of :func:`~glmed.io.writers.atomic_path`'s pattern (``.NAME.RANDOM.tmp.EXT``)
    are touched; call it only on a folder this program owns, before writing into it again.
    """
    removed = []
    for path in Path(folder).rglob(".*"):
        if path.is_file() and _TEMPORARY.match(path.name):
            path.unlink()
            removed.append(path)
    return removed

