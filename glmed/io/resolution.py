"""Microns per pixel: the physical size of a slide's level-0 pixel, wherever the file keeps it.

Areas a pathologist reads (tissue in mm², a tumour region in µm²) and sizes that must not depend
on the scanner's magnification (the smallest tissue fragment worth keeping) need it. Sources, in
the order tried:

- OpenSlide's ``openslide.mpp-x`` / ``openslide.mpp-y`` (Aperio's ``MPP``, Hamamatsu's and the
  other vendors' own fields, a generic TIFF's resolution tags), for slides opened with OpenSlide;
- for TIFFs read with tifffile, an Aperio ImageDescription's ``MPP = ...`` field, else the
  resolution tags when their unit is the centimetre or the inch and they give under
  :data:`MAX_MPP` µm/px (a 72 dpi default is not a microscope's resolution);
- a region of a slide has its slide's; a slide seen at another resolution
  (:class:`~glmed.io.resampled.ResampledReader`) has that resolution.

Everything else (JPEG, PNG, arrays) has none: callers then work in pixels.
"""

from __future__ import annotations

import math
import re

from glmed.io.base import ImageReader

MAX_MPP = 20.0
"""The coarsest resolution trusted from TIFF resolution tags (a 0.5x scan); coarser is a screen or print default."""

_APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")

_UNIT_MICRONS = {2: 25400.0, 3: 10000.0}
"""Microns per TIFF ResolutionUnit: 2 is the inch, 3 the centimetre."""


def microns_per_pixel(reader: ImageReader) -> tuple[float, float] | None:
    """``(rows, cols)`` microns per level-0 pixel of ``reader``'s image, or None where the file does not say.

    Reads only metadata. For a :class:`~glmed.io.tiff_reader.TiffReader` the file's first page
    header is read again (cheap).
    """
    from glmed.io.region import RegionReader
    from glmed.io.resampled import ResampledReader

    if isinstance(reader, RegionReader):
        return microns_per_pixel(reader.reader)
    if isinstance(reader, ResampledReader):
        return reader.mpp
    properties = getattr(reader, "properties", None)
    if isinstance(properties, dict) and "openslide.vendor" in properties:
        return _pair(properties.get("openslide.mpp-y"), properties.get("openslide.mpp-x"))
    from glmed.io.tiff_reader import TiffReader

    if isinstance(reader, TiffReader):
        return _tiff_mpp(reader.path)
    return None


def mean_mpp(reader: ImageReader) -> float | None:
    """The mean of the two axes' microns per pixel, or None (see :func:`microns_per_pixel`)."""
    pair = microns_per_pixel(reader)
    return None if pair is None else (pair[0] + pair[1]) / 2


def aperio_mpp(description: str) -> float | None:
    """The ``MPP = ...`` field of an Aperio ImageDescription, or None."""
    if not description.startswith("Aperio"):
        return None
    match = _APERIO_MPP.search(description)
    return _positive(match.group(1)) if match else None


def _tiff_mpp(path: str) -> tuple[float, float] | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages.first
            description = str(page.description or "")
            tags = {name: page.tags.valueof(name) for name in ("XResolution", "YResolution", "ResolutionUnit")}
    except (OSError, ValueError):  # the reader opened it; a file changed since leaves the resolution unknown
        return None
    mpp = aperio_mpp(description)
    if mpp is not None:
        return (mpp, mpp)
    microns = _UNIT_MICRONS.get(int(tags["ResolutionUnit"] or 0))
    if microns is None:
        return None
    pair = _pair(_per_unit(tags["YResolution"], microns), _per_unit(tags["XResolution"], microns))
    if pair is None or max(pair) > MAX_MPP:
        return None
    return pair


def _per_unit(resolution: object, microns: float) -> float | None:
    """Microns per pixel from a TIFF rational (pixels per unit), or None."""
    if isinstance(resolution, tuple) and len(resolution) == 2 and resolution[0]:
        return microns * resolution[1] / resolution[0]
    return None


def _pair(rows: object, cols: object) -> tuple[float, float] | None:
    """Both values as positive finite floats, one standing in for the other when missing, or None."""
    row, col = _positive(rows), _positive(cols)
    if row is None and col is None:
        return None
    return (row or col or 0.0, col or row or 0.0)


def _positive(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None
