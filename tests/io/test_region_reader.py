import numpy as np
import pytest

from glmed.io.base import ArrayReader
from glmed.io.region import RegionReader


def test_region_reads_are_offset_into_the_whole_image():
    image = np.arange(40 * 50 * 3, dtype=np.int64).reshape(40, 50, 3)
    region = RegionReader(ArrayReader(image, name="whole"), (10, 20, 30, 45))
    assert region.size == (20, 25) and region.channels == 3
    np.testing.assert_array_equal(region.read((0, 0, 20, 25)), image[10:30, 20:45])
    np.testing.assert_array_equal(region.read((5, 5, 7, 9)), image[15:17, 25:29])
    # the region's downsampled view is the cropped image's
    np.testing.assert_array_equal(region.resized((8, 10)), ArrayReader(image[10:30, 20:45]).resized((8, 10)))


def test_reads_outside_the_region_are_refused_with_its_name():
    region = RegionReader(ArrayReader(np.zeros((40, 50, 3)), name="whole"), (10, 20, 30, 45))
    with pytest.raises(ValueError, match=r"whole\[10:30, 20:45\]"):
        region.read((0, 0, 21, 5))
    with pytest.raises(ValueError, match="outside"):
        RegionReader(ArrayReader(np.zeros((40, 50, 3))), (0, 0, 41, 5))
