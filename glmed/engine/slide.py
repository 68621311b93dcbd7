"""Whole-slide inference that streams: a slide of any size in, a tiled pyramidal TIFF mask out.

The global branch sees a view built from the slide's coarsest sufficient pyramid level; patches
are read region by region, a batch at a time; their outputs are averaged a band of rows at a
time (:class:`~glmed.engine.stitching.RowBandMerger`) into a scratch mask memory-mapped from a
file beside the output (one byte per pixel, on disk); that mask is then written tile by tile as
a pyramidal TIFF and moved into place in one step. Host memory grows with the slide's width (one
band of patch rows), never with its area; no full-size array is ever held in memory.

Resident memory as the OS reports it also counts the scratch file's pages cached in memory;
those are file-backed, written back and dropped whenever memory is needed elsewhere.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import numpy as np
import torch

from glmed.data.normalize import Normalization
from glmed.engine.inferer import GlobalLocalInferer, ImageLike, open_as_reader
from glmed.engine.stitching import label_dtype
from glmed.io.writers import write_pyramidal_tiff
from glmed.models.glnet import GLNet
from glmed.types import Box, Size

__all__ = ["SlidePrediction", "predict_to_tiff"]


@dataclass
class SlidePrediction:
    """What :func:`predict_to_tiff` wrote and did.

    Attributes:
        path: the pyramidal TIFF holding the ``H×W`` class-index mask (level 0 full resolution).
        size: ``(height, width)`` of the mask, the slide's level-0 size.
        boxes: regions refined at full resolution by coarse-to-fine models (end-exclusive).
        patches: full-resolution patches the local branch processed.
        notes: plain-language remarks about this prediction.
    """

    path: Path
    size: Size
    boxes: List[Box] = field(default_factory=list)
    patches: int = 0
    notes: List[str] = field(default_factory=list)


def predict_to_tiff(
    model: GLNet,
    image: ImageLike,
    path: str | os.PathLike,
    *,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    normalization: Normalization = Normalization(),
    progress: bool = False,
    tile: int = 512,
    compression: str | None = "zlib",
) -> SlidePrediction:
    """Segment a whole slide (or any image) and write the mask as a tiled pyramidal TIFF.

    Args:
        model: a GLNet or CoarseToFineGLNet, as for :func:`glmed.predict`.
        image: a slide path (any format glmed reads: SVS, NDPI, pyramidal TIFF, ...), an open
            reader or an array.
        path: the ``.tif`` to write; it appears only once complete (nothing is left behind on
            failure). Pixel values are class indices; its levels halve the size (nearest
            neighbour) until one tile holds the smallest, so slide viewers and
            :func:`glmed.open_image` read it at any zoom.
        batch_size: patches per forward pass; bounds device memory.
        device: where to run; the model's device by default.
        normalization: pixel scaling, as in training.
        progress: show progress bars over the patch passes.
        tile: TIFF tile side (a multiple of 16).
        compression: ``"zlib"`` (lossless, default), ``"lzw"`` or ``None``; never JPEG, which
            would alter class indices.

    Raises:
        ValueError: a lossy compression, or a folder for ``path`` that does not exist.
    """
    if compression not in ("zlib", "lzw", None):
        raise ValueError(f"{path}: masks need lossless compression: 'zlib', 'lzw' or None, got {compression!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"{path}: the folder {path.parent} does not exist")
    reader, opened = open_as_reader(image)
    inferer = GlobalLocalInferer(batch_size=batch_size, device=device, normalization=normalization, progress=progress)
    try:
        with _scratch_mask(path, reader.size, label_dtype(model.config.num_classes)) as mask:
            result = inferer(model, reader, out=mask, with_coarse=False)
            mask.flush()
            write_pyramidal_tiff(path, mask, tile=tile, compression=compression, resampling="nearest")
    finally:
        if opened:
            reader.close()
    return SlidePrediction(path, tuple(reader.size), result.boxes, result.patches, result.notes)


class _scratch_mask:
    """A zero-filled ``H×W`` array memory-mapped from a hidden file beside ``target``, deleted on exit.

    The file's space is reserved up front, so a full disk is an error here rather than a crash
    (SIGBUS) when a page of the mapping is first written.
    """

    def __init__(self, target: Path, size: Size, dtype: np.dtype) -> None:
        self._target, self._size, self._dtype = target, tuple(int(s) for s in size), np.dtype(dtype)
        self._file = ""

    def __enter__(self) -> np.memmap:
        handle, self._file = tempfile.mkstemp(prefix=f".{self._target.name}.", suffix=".scratch",
                                              dir=self._target.parent)
        nbytes = self._size[0] * self._size[1] * self._dtype.itemsize
        try:
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(handle, 0, nbytes)
                else:
                    os.ftruncate(handle, nbytes)
            finally:
                os.close(handle)
            self._mask = np.memmap(self._file, dtype=self._dtype, mode="r+", shape=self._size)
        except OSError as error:
            os.remove(self._file)
            raise OSError(f"{self._target}: cannot reserve {nbytes / 2**30:.2f} GiB of scratch space "
                          f"in {self._target.parent} for the mask ({error.strerror or error})") from error
        return self._mask

    def __exit__(self, *exc: object) -> None:
        del self._mask  # drop this mapping; the caller's goes with it (POSIX removes mapped files fine)
        os.remove(self._file)
