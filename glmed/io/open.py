"""``open_image``: one call that picks the right reader for a file.

The reader is chosen by the file's content (its magic bytes), the extension deciding only
where content cannot (whole-slide formats OpenSlide knows by name, NIfTI):

================================  ====================  =====================================
content                           backend               reader
================================  ====================  =====================================
JPEG, PNG, BMP                    ``"pillow"``          :class:`~glmed.io.pillow_reader.PillowReader`
TIFF / BigTIFF                    ``"tifffile"``        :class:`~glmed.io.tiff_reader.TiffReader`
TIFF named .svs .ndpi .scn .bif   ``"openslide"``       :class:`~glmed.io.slide_reader.SlideReader`
  .svslide; .mrxs .vms .vmu;      (tifffile for TIFF-based ones if OpenSlide is missing)
  DICOM (``DICM`` at byte 128)
NIfTI (.nii, .nii.gz)             ``"nibabel"``         :class:`~glmed.io.nifti_reader.NiftiReader`
================================  ====================  =====================================

A content/extension mismatch (a JPEG named ``.png``) is read by its content.
"""

from __future__ import annotations

import importlib
import os

import numpy as np

from glmed.io.base import DEFAULT_MAX_PIXELS, ArrayReader, ImageFormatError, ImageReader, bilevel_to_uint8

ImageLike = ImageReader | np.ndarray | str | os.PathLike
"""What glmed accepts as an image: an open reader, an ``H×W(×C)`` array, or a file path."""

BACKENDS: dict[str, tuple[str, str]] = {
    "pillow": ("glmed.io.pillow_reader", "PillowReader"),
    "tifffile": ("glmed.io.tiff_reader", "TiffReader"),
    "openslide": ("glmed.io.slide_reader", "SlideReader"),
    "nibabel": ("glmed.io.nifti_reader", "NiftiReader"),
}
"""Backend name -> (module, reader class), imported only when chosen."""

SLIDE_TIFF_EXTENSIONS = (".svs", ".ndpi", ".scn", ".bif", ".svslide")
"""TIFF-based vendor formats read with OpenSlide, which knows their layouts and metadata."""

SLIDE_EXTENSIONS = (".mrxs", ".vms", ".vmu", ".dcm")
"""Whole-slide formats only OpenSlide reads (index files pointing at other files)."""

_MAGIC = (
    (b"\xff\xd8\xff", "pillow"),
    (b"\x89PNG\r\n\x1a\n", "pillow"),
    (b"BM", "pillow"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
)


def open_image(
    path: str | os.PathLike, backend: str | None = None, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> ImageReader:
    """Open an image file for region reads, choosing the reader by content (see the module table).

    Args:
        path: the file (for MRXS, the ``.mrxs`` index; for DICOM WSI, any file of the series).
        backend: force a reader: ``"pillow"``, ``"tifffile"``, ``"openslide"`` or ``"nibabel"``.
        max_pixels: the most pixels one array read from the file may hold
            (:data:`~glmed.io.base.DEFAULT_MAX_PIXELS`); ``None`` for no limit.

    Raises:
        FileNotFoundError: no such file.
        ImageFormatError: unknown format, corrupt or truncated file, decompression bomb
            (:class:`~glmed.io.base.ImageTooLargeError`); the message starts with the path.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageFormatError(f"{path}: is a folder, not an image file (for DICOM WSI, name one of its files)")
    if backend is None:
        backend = _sniff(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    module, name = BACKENDS[backend]
    return getattr(importlib.import_module(module), name)(path, max_pixels=max_pixels)


def _sniff(path: str) -> str:
    """The backend for ``path``, from its first bytes and its extension."""
    with open(path, "rb") as handle:
        head = handle.read(352)
    lower = path.lower()
    if not head:
        raise ImageFormatError(f"{path}: the file is empty")
    if lower.endswith(SLIDE_EXTENSIONS) or head[128:132] == b"DICM":
        return "openslide"
    if lower.endswith((".nii", ".nii.gz")):
        return "nibabel"
    kind = next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)
    if kind == "tiff":
        return "openslide" if lower.endswith(SLIDE_TIFF_EXTENSIONS) and _has_openslide() else "tifffile"
    if kind is not None:
        return kind
    raise ImageFormatError(
        f"{path}: unknown image format (first bytes {head[:8]!r}); glmed reads JPEG, PNG, BMP, TIFF/BigTIFF, "
        "SVS, NDPI, MRXS, SCN, BIF, VMS, DICOM WSI and NIfTI (.nii, .nii.gz)"
    )


def _has_openslide() -> bool:
    try:
        importlib.import_module("openslide")
    except ImportError:
        return False
    return True


def as_reader(image: ImageReader | np.ndarray, name: str = "<array>") -> ImageReader:
    """An :class:`ImageReader` for a reader (returned as is) or an ``H×W`` / ``H×W×C`` array."""
    return image if isinstance(image, ImageReader) else ArrayReader(np.asarray(image), name=name)


def open_as_reader(image: ImageLike) -> tuple[ImageReader, bool]:
    """A reader for ``image`` and whether this call opened it (and so must close it).

    A bool array becomes 0/255 uint8 first, as 1-bit files are read: averaged down to the
    global view, bool pixels would all turn True.
    """
    if isinstance(image, (str, os.PathLike)):
        return open_image(image), True
    if isinstance(image, np.ndarray):
        return as_reader(bilevel_to_uint8(image)), False
    if isinstance(image, ImageReader):
        return image, False
    raise TypeError(f"expected an image array, a file path or an ImageReader, got {type(image).__name__}")
