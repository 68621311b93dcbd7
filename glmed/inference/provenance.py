"""Which model and settings made a folder of masks, so a rerun never keeps another model's work.

A folder run (``glmed predict CKPT images/ out/``) keeps a record, ``out/.glmed-run.json``:
the checkpoint's SHA-256, the options that change the masks, and the masks finished under
them. Run again with the same checkpoint and options, it resumes (finished masks are kept);
with anything different, every mask is recomputed and the run says what changed. The
record is rewritten atomically after each mask, so a run killed at any point resumes
correctly. Dot-files are ignored by glmed's own folder scans, so the record never reaches
the scorer as a prediction.
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
"""The record's file name inside an output folder."""

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
    """The model and options behind a folder of outputs, and the outputs finished under them.

    Attributes:
        checkpoint: the checkpoint's SHA-256.
        checkpoint_path: where it was read from (shown in messages only; moving a file is harmless).
        options: every setting that changes the masks (batch size included: it can change the last bits).
        finished: output file names written under this checkpoint and these options.
    """

    checkpoint: str
    checkpoint_path: str
    options: dict[str, Any]
    finished: list[str] = field(default_factory=list)

    def same_run(self, other: RunRecord) -> bool:
        """Whether ``other`` would make the same masks (same checkpoint bytes and options)."""
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

    def save(self, folder: Path) -> None:
        """Write the record into ``folder`` atomically."""
        with atomic_path(folder / RECORD_NAME) as temporary:
            Path(temporary).write_text(json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: Path) -> RunRecord | None:
        """The record in ``folder``, or None where there is none or it cannot be read."""
        path = folder / RECORD_NAME
        try:
            values = json.loads(path.read_text())
            return cls(str(values["checkpoint"]), str(values["checkpoint_path"]), dict(values["options"]),
                       [str(name) for name in values.get("finished", [])])
        except (OSError, ValueError, KeyError, TypeError):
            return None
