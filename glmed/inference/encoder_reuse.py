"""Keeping the collect pass's encoder maps for bidirectional sharing's final pass (``reuse_encoder``).

Bidirectional GLNet runs every refined patch through the local branch twice: the collect pass
(whose maps, stitched, give the global branch its local context) and the final pass (which takes
the global branch's second maps). The global maps enter the local branch only after its ResNet
encoder, at the FPN's lateral convolutions, so the encoder computes the same ``c2``–``c5`` maps
both times. Measured on the 2-core CPU of docs/benchmarks.md (ResNet50, 508-pixel patches, batch
1): the encoder is 0.35–0.39 s of a final pass of about 0.8 s. Keeping its maps from the collect
pass saves that time, bit for bit the same mask, at the price of memory: every refined patch's
four maps are held from its collect pass until its final pass (31 MB per patch in float32 for
ResNet50 at 508 pixels, half under bf16; 4.7 GB for a 6748×4499 image's 150 patches). So it is
an option (off unless asked for, or unless ``max_memory`` finds room for it), counted by
:mod:`glmed.inference.memory_budget`.

Why by hand: the maps are the model's own intermediate outputs, kept between two passes the
inferer runs; no library keeps activations across separate forward passes.

The final pass batches a region's refined patches exactly as the collect pass did (a resumed run
starts at a batch boundary, :func:`glmed.inference.resume.resume_start`), so each of its batches
finds the maps kept under the same view and pixel boxes; one that does not runs the encoder as
without the option.
"""

from __future__ import annotations

import numpy as np
import torch

from glmed.inference.memory_budget import storage_bytes
from glmed.inference.tta import Dihedral

__all__ = ["EncoderReuse", "EncoderStore", "batch_key"]

BatchKey = tuple[str, tuple[tuple[int, ...], ...]]


def batch_key(view: Dihedral, pixel_boxes: np.ndarray) -> BatchKey:
    """The key of one batch of patches: the view it runs in and its pixel boxes, in order."""
    return view.name, _box_tuples(pixel_boxes)


def _box_tuples(boxes: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """``N×4`` pixel boxes as tuples of Python ints (hashable, comparable whatever the array's type)."""
    return tuple(tuple(int(value) for value in box) for box in np.asarray(boxes).tolist())


class EncoderReuse:
    """One prediction's tally of kept encoder maps over its regions (each coarse-to-fine box has its own store)."""

    def __init__(self) -> None:
        self.kept = 0  # patch passes (a patch once per view) whose maps were kept
        self.reused = 0  # of those, taken by the final pass
        self.peak_bytes = 0  # the most one store held at once

    def store(self, wanted_boxes: np.ndarray) -> EncoderStore:
        """A store for one region's passes, keeping the batches whose patches are all in ``wanted_boxes``.

        Args:
            wanted_boxes: ``N×4`` pixel boxes of the patches the final pass will run (a resumed
                run's unfinished ones), so a batch it will not run is not held.
        """
        return EncoderStore(wanted_boxes, self)

    def note(self) -> str:
        """One line for ``result.notes``: how many patches skipped their second encoder pass, and the memory held."""
        if not self.kept:
            return "reuse_encoder: no collect pass ran, so no encoder maps were kept"
        return (f"reuse_encoder: the final pass took the collect pass's encoder maps for {self.reused} of "
                f"{self.kept} patch passes (the same mask, without their second encoder pass), holding at most "
                f"{self.peak_bytes / 1e6:,.0f} MB between the passes")


class EncoderStore:
    """One region's encoder maps, kept per batch by the collect pass and taken (once) by the final pass."""

    def __init__(self, wanted_boxes: np.ndarray, tally: EncoderReuse) -> None:
        self._wanted = set(_box_tuples(wanted_boxes))
        self._maps: dict[BatchKey, dict[str, torch.Tensor]] = {}
        self._tally = tally
        self.nbytes = 0

    def keep(self, key: BatchKey, maps: dict[str, torch.Tensor]) -> None:
        """Hold one batch's encoder maps under ``key``, if the final pass will run all its patches."""
        if key in self._maps or not all(box in self._wanted for box in key[1]):
            return
        self._maps[key] = maps
        self.nbytes += storage_bytes(*maps.values())
        self._tally.kept += len(key[1])
        self._tally.peak_bytes = max(self._tally.peak_bytes, self.nbytes)

    def take(self, key: BatchKey) -> dict[str, torch.Tensor] | None:
        """The maps kept under ``key``, released from the store; None when there are none (compute them)."""
        maps = self._maps.pop(key, None)
        if maps is not None:
            self.nbytes -= storage_bytes(*maps.values())
            self._tally.reused += len(key[1])
        return maps

    def clear(self) -> None:
        """Release whatever the final pass did not take."""
        self._maps.clear()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._maps)
