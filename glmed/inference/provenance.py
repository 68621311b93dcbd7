"""Which model and settings made a folder of masks, so a rerun never keeps another model's work.

A folder run (``glmed predict CKPT images/ out/``) keeps a record beside each mask,
``out/.NAME.glmed-run.json`` (:func:`record_path`): the checkpoint's SHA-256, the options that
change the mask, and the mask's line of the run's summary (size, µm/px, areas, patches, seconds,
status). Run again with the same checkpoint and options, finished masks are kept; with anything
different, they are recomputed and the run says what changed. A record is written atomically
right after its mask, so a run killed at any point resumes correctly, and, being one file per
mask, processes sharing a folder (``--part``, torchrun) never overwrite each other's. A slide that
failed gets a record too (status ``failed``, no mask), for the summary. Dot-files are ignored by
glmed's own folder scans, so records never reach the scorer as predictions.

Folders written before per-mask records kept one record for the whole folder,
``out/.glmed-run.json``; their masks have none beside them, so they are recomputed once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glmed.conventions import RUN_RECORD_NAME
from glmed.io.writers import atomic_path

RECORD_NAME = RUN_RECORD_NAME
"""How a record's file name ends (:func:`record_path`)."""

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (a checkpoint), read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class RunRecord:
    """The model and options behind one output of a folder run, and its line of the run's summary.

    Attributes:
        checkpoint: the checkpoint's SHA-256.
        checkpoint_path: where it was read from (shown in messages only; moving a file is harmless).
        options: every setting that changes the output (batch size included: it can change the last bits).
        summary: the output's line of the run's summary (:mod:`glmed.cli.summary`), status included.
    """

    checkpoint: str
    checkpoint_path: str
    options: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    def same_run(self, other: RunRecord) -> bool:
        """Whether ``other`` would make the same outputs (same checkpoint bytes and options)."""
        return self.checkpoint == other.checkpoint and self.options == other.options

    def differences(self, earlier: RunRecord) -> list[str]:
        """What changed since ``earlier``, in words."""
        changes = []
        if self.checkpoint != earlier.checkpoint:
            changes.append(f"checkpoint {earlier.checkpoint_path} (sha256 {earlier.checkpoint[:12]}) → "
                           f"{self.checkpoint_path} (sha256 {self.checkpoint[:12]})")
        for name in sorted(set(self.options) | set(earlier.options)):
            before, now = earlier.options.get(name), self.options.get(name)
            if before != now:
                changes.append(f"{name} {before!r} → {now!r}")
        return changes

    def save(self, output: Path) -> None:
        """Write this record of ``output`` beside it (:func:`record_path`), atomically."""
        with atomic_path(record_path(output)) as temporary:
            Path(temporary).write_text(json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, output: Path) -> RunRecord | None:
        """The record beside ``output``, or None where there is none or it cannot be read."""
        try:
            values = json.loads(record_path(output).read_text())
            return cls(str(values["checkpoint"]), str(values["checkpoint_path"]), dict(values["options"]),
                       dict(values.get("summary", {})))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


def record_path(output: Path) -> Path:
    """Where the record of ``output`` lives: ``.NAME.glmed-run.json`` beside it (a dot-file)."""
    return output.with_name(f".{output.name}{RECORD_NAME}")
