"""Microns per pixel from wherever the file keeps it, and None where it says nothing."""

import numpy as np
import pytest
import tifffile

from glmed.io import ArrayReader, open_image
from glmed.io.resolution import aperio_mpp, mean_mpp, microns_per_pixel


def _tiff(path, **options):
    tifffile.imwrite(path, np.zeros((32, 48, 3), np.uint8), photometric="rgb", **options)
    return path


def test_aperio_description_gives_the_mpp():
    assert aperio_mpp("Aperio Image Library v10\r\n46000x32914 [0,0] JPEG/RGB Q=30|AppMag = 20|MPP = 0.4990") == 0.499
    assert aperio_mpp("Aperio Image Library v10\r\nlabel 200x200") is None
    assert aperio_mpp("ImageJ=1.53|MPP = 0.5") is None
    assert aperio_mpp("Aperio |MPP = -1") is None


@pytest.mark.parametrize(
    "options, expected",
    [
        (dict(resolution=(1e4 / 0.5, 1e4 / 0.25), resolutionunit="CENTIMETER"), (0.25, 0.5)),
        (dict(resolution=(25400 / 0.5, 25400 / 0.5), resolutionunit="INCH"), (0.5, 0.5)),
        (dict(resolution=(72, 72), resolutionunit="INCH"), None),  # a screen default, not a microscope
        (dict(), None),
        (dict(description="Aperio Image Library v12\r\n48x32|MPP = 0.2527", metadata=None), (0.2527, 0.2527)),
    ],
    ids=["centimetre", "inch", "72dpi", "none", "aperio"],
)
def test_tiff_resolution(tmp_path, options, expected):
    with open_image(_tiff(tmp_path / "image.tif", **options)) as reader:
        assert microns_per_pixel(reader) == (pytest.approx(expected) if expected else None)
        assert microns_per_pixel(reader.crop((0, 0, 8, 8))) == microns_per_pixel(reader)


def test_arrays_have_no_resolution():
    reader = ArrayReader(np.zeros((8, 8, 3), np.uint8))
    assert microns_per_pixel(reader) is None and mean_mpp(reader) is None


def test_openslide_properties_are_used(tmp_path):
    pytest.importorskip("openslide")
    path = _tiff(tmp_path / "image.tif", tile=(16, 16), resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with open_image(path, backend="openslide") as reader:
        assert microns_per_pixel(reader) == (0.5, 0.5) and mean_mpp(reader) == 0.5
