"""2-D NIfTI images and masks (``.nii``, ``.nii.gz``) through nibabel.

Orientation: glmed reads the data array as stored and does not reorient it: NIfTI axis 0
becomes rows and axis 1 columns. An ``H x W`` numpy array saved with
``nibabel.Nifti1Image(array, affine)`` therefore reads back as the same ``H x W`` array,
and a mask written that way lines up with its image. The affine is ignored. Tools that
treat axis 0 as x (ITK, SimpleITK, most viewers) show such a file transposed; a NIfTI
written by them reads here as the transpose of what they display.

Shapes: ``(H, W)`` is one channel; the z and t axes (3rd and 4th) must have length 1; the
5th (vector components, as in ``(H, W, 1, 1, C)``) holds channels, as do the RGB24 and
RGBA32 data types. Anything else is a volume and is refused. Scaled data
(``scl_slope``/``scl_inter``) comes back scaled, as nibabel applies it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, cast

import numpy as np

from glmed.io.base import DEFAULT_MAX_PIXELS, DecodedReader, ImageFormatError, decoding

if TYPE_CHECKING:
    from nibabel.nifti1 import Nifti1Image


class NiftiReader(DecodedReader):
    """A 2-D NIfTI-1 or NIfTI-2 file: header read on opening, data decoded once on first read."""

    def __init__(self, path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        import nibabel

        self.path = os.fspath(path)
        try:
            with decoding(self.path, "open"):
                # nibabel.load is typed as returning any file-based image; a NIfTI-1 or NIfTI-2
                # file loads as a Nifti1Image (Nifti2Image is a subclass), with shape and dataobj.
                self._image = cast("Nifti1Image", nibabel.load(self.path))
        except nibabel.filebasedimages.ImageFileError as error:
            raise ImageFormatError(f"{self.path}: not a NIfTI file nibabel reads ({error})") from error
        (height, width), channels = _layout(self.path, self._image.shape, self._image.get_data_dtype())
        self._check_length()
        with decoding(self.path, "read"):
            probe = self._image.dataobj[(0, 0) + (0,) * (len(self._image.shape) - 2)]
        dtype = np.dtype(np.uint8) if np.asarray(probe).dtype.names else np.asarray(probe).dtype
        super().__init__(self.path, (height, width), channels, dtype, max_pixels)

    def _check_length(self) -> None:
        """Refuse an uncompressed file shorter than its header says (the cheap truncation check)."""
        if self.path.lower().endswith(".gz"):
            return
        header = self._image.header
        needed = int(header.get_data_offset()) + int(np.prod(self._image.shape)) * header.get_data_dtype().itemsize
        actual = os.path.getsize(self.path)
        if actual < needed:
            raise ImageFormatError(
                f"{self.path}: the file is truncated, its header needs {needed} bytes but it has {actual}"
            )

    def _decode(self) -> np.ndarray:
        array = np.asanyarray(self._image.dataobj)
        if array.dtype.names:  # RGB24 / RGBA32: one record per pixel
            array = np.stack([array[field] for field in array.dtype.names], axis=-1)
        return np.ascontiguousarray(array.reshape(self.size + (self.channels,)))

    def close(self) -> None:
        """Drop the decoded pixels and nibabel's cached copy of the data."""
        super().close()
        self._image.uncache()


def _layout(path: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[tuple[int, int], int]:
    """``((height, width), channels)`` of a NIfTI shape, or an error for a volume."""
    if len(shape) < 2:
        raise ImageFormatError(f"{path}: a {len(shape)}-D NIfTI is not an image")
    extra = tuple(shape[2:]) + (1,) * max(0, 3 - len(shape[2:]))
    channels = extra[2] if len(extra) >= 3 else 1
    if any(n != 1 for n in extra[:2] + extra[3:]) or (dtype.names and channels != 1):
        raise ImageFormatError(
            f"{path}: holds a volume of shape {tuple(shape)}; glmed reads 2-D NIfTI images "
            "(H, W) or (H, W, 1, 1, channels): save one slice"
        )
    if dtype.names:
        channels = len(dtype.names)
    return (int(shape[0]), int(shape[1])), int(channels)
