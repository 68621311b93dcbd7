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
import warnings
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
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        CheckpointError: the file is not a glmed checkpoint; one line names it and says why.
        ValueError: ``map_location`` names a device this machine does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    problem = device_problem(map_location, option="map_location=")
    if problem is not None:  # not the file's fault: say so before torch blames the file
        raise ValueError(f"map_location={str(map_location)!r}: {problem}")
    try:
        with warnings.catch_warnings():
            # torch asks the user to file an issue about the pickle protocol of files it cannot read anyway
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a bad file
        raise CheckpointError(f"{path}: not a glmed checkpoint ({unreadable_reason(path, error)})") from None
    if not isinstance(record, dict) or "model" not in record or "format" not in record:
        what = f"keys {', '.join(map(repr, list(record)[:5]))}" if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(f"{path}: not a glmed checkpoint (a torch file holding {what}, not a model "
                              "saved by glmed.save_model or a recipe)")
    if record["format"] != FORMAT:
        newer = isinstance(record["format"], int) and record["format"] > FORMAT
        raise CheckpointError(f"{path}: not a glmed checkpoint of format {FORMAT} (it has format {record['format']!r}"
                              + ("; a newer glmed wrote it: upgrade glmed)" if newer else ")"))
    return record


def unreadable_reason(path: str | os.PathLike, error: BaseException) -> str:
    """A short reason why ``torch.load(path, weights_only=True)`` failed with ``error``.

    It says what the file looks like (empty, text, an HTML page, a Git LFS pointer, a cut-off
    zip archive, a pickle of other objects) and never repeats torch's advice to load with
    ``weights_only=False``, which runs whatever code the file holds.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if size == 0:
        return "an empty file"
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if found:
        return (f"it holds Python objects ({found.group(1)}) besides tensors and plain values, which glmed "
                "checkpoints never do")
    if head.startswith(b"PK\x03\x04"):  # torch.save writes a zip archive
        return f"a damaged or cut-off torch file of {size} bytes; copy it again from where it was saved"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights; fetch them with 'git lfs pull'"
    if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page, not weights; the download probably failed"
    if _looks_like_text(head):
        first = head.decode("utf-8", "replace").strip().splitlines()[0][:40]
        return f"a text file starting {first!r}, not a torch.save file"
    return "not a file written by torch.save"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\t\r\n" for char in text)


def device_problem(device: str | torch.device, option: str = "--device") -> str | None:
    """Why ``device`` cannot be used on this machine (malformed, or no such device), or None.

    The reason ends with the fix, phrased with ``option`` (``"--device"`` gives ``use --device cpu``,
    ``"map_location="`` gives ``use map_location='cpu'``), for messages such as ``--device cuda: <reason>``.
    """

    def use(value: str) -> str:
        return f"use {option}{value!r}" if option.endswith("=") else f"use {option} {value}"

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return f"not a device; {use('cpu')}, cuda or cuda:N"
    if parsed.type == "cpu":
        return None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = ("CPU-only build" if torch.version.cuda is None
                     else f"built for CUDA {torch.version.cuda}, but it finds no GPU or driver")
            return f"this machine has no CUDA device (torch {torch.__version__}, {build}); {use('cpu')}"
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            return f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; {use('cuda')}"
        return None
    if parsed.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return f"this machine has no Apple GPU (MPS); {use('cpu')}"
        return None
    return f"glmed runs on cpu, cuda or mps, not {parsed.type}; {use('cpu')}"


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

