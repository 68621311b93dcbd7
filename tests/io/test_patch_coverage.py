"""The patch grid read through real readers covers every pixel of awkward sizes with patch-sized reads."""

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from glmed.geometry import patch_grid, patch_size_for
from glmed.io import open_image


def _gradient(height, width):
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = rows % 251, cols % 241, (rows // 7 + cols // 5) % 256
    return image


def _jpeg(path, image):
    Image.fromarray(image).save(path.with_suffix(".jpg"), quality=85)
    return path.with_suffix(".jpg")


def _png(path, image):
    Image.fromarray(image).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


def _tiled_tiff(path, image):
    tifffile.imwrite(path.with_suffix(".tif"), image, tile=(32, 32), compression="zlib", photometric="rgb")
    return path.with_suffix(".tif")


def _nifti(path, image):
    nib.save(nib.Nifti1Image(image[:, :, None, None, :], np.eye(4)), path.with_suffix(".nii.gz"))
    return path.with_suffix(".nii.gz")


@pytest.mark.parametrize(
    "size, write",
    [((4499, 6748), _jpeg), ((509, 509), _png), ((50, 1000), _tiled_tiff), ((1000, 50), _nifti)],
    ids=["isic-6748x4499-jpeg", "509x509-png", "1000x50-tiff", "50x1000-nifti"],
)
def test_grid_covers_every_pixel_with_patch_sized_reads(tmp_path, size, write):
    image = _gradient(*size)
    reader = open_image(write(tmp_path / "img", image))
    assert reader.size == size
    truth = reader.read((0, 0) + size)  # the decoded pixels (JPEG is lossy); lossless formats equal the source
    if write is not _jpeg:
        np.testing.assert_array_equal(truth, image)
    grid = patch_grid(reader.size, patch_size=508, overlap=50)
    expected = patch_size_for(size, (508, 508))
    covered = np.zeros(size, np.int32)
    for r0, c0, r1, c1 in grid.boxes.tolist():
        patch = reader.read((r0, c0, r1, c1))
        assert patch.shape == expected + (3,)
        assert np.array_equal(patch, truth[r0:r1, c0:c1]), (r0, c0, r1, c1)
        covered[r0:r1, c0:c1] += 1
    assert covered.min() >= 1
    if size == (4499, 6748):
        assert 140 <= len(grid) <= 160  # "about 150 patches" (REFERENCES.md)
