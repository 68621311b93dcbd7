"""Image readers behind one interface, and writers that never leave a half-written file.

Importing this package loads numpy only: Pillow, tifffile, OpenSlide and nibabel are
imported by the reader that needs them, when a file of that kind is opened. See
``docs/io.md`` for formats, conventions, conversions and limits.
"""

from __future__ import annotations

from glmed._lazy import lazy_exports
from glmed.io.base import (
    DEFAULT_MAX_PIXELS,
    ArrayReader,
    DecodedReader,
    ImageFormatError,
    ImageReader,
    ImageTooLargeError,
)
from glmed.io.convert import flatten_alpha, to_rgb8
from glmed.io.labels import LabelError, binary_to_index, deepglobe_to_index, index_to_deepglobe, mask_to_index
from glmed.io.open import open_image
from glmed.io.writers import atomic_path, write_mask_png, write_pyramidal_tiff

_READERS = {
    "PillowReader": "glmed.io.pillow_reader",
    "TiffReader": "glmed.io.tiff_reader",
    "SlideReader": "glmed.io.slide_reader",
    "NiftiReader": "glmed.io.nifti_reader",
}

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ArrayReader",
    "DecodedReader",
    "ImageFormatError",
    "ImageReader",
    "ImageTooLargeError",
    "LabelError",
    "atomic_path",
    "binary_to_index",
    "deepglobe_to_index",
    "flatten_alpha",
    "index_to_deepglobe",
    "mask_to_index",
    "open_image",
    "to_rgb8",
    "write_mask_png",
    "write_pyramidal_tiff",
] + sorted(_READERS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _READERS)
