"""Image readers behind one interface, and writers that never leave a half-written file."""

from glmed.io.base import ArrayReader, ImageReader

__all__ = ["ArrayReader", "ImageReader"]
