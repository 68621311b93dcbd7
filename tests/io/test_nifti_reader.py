"""2-D NIfTI through nibabel: an H x W array saved with nibabel reads back as the same H x W array."""

import nibabel as nib
import numpy as np
import pytest

from glmed.io import ImageFormatError, binary_to_index, open_image
from glmed.io.nifti_reader import NiftiReader


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_mask_round_trip_keeps_rows_and_columns(tmp_path, suffix):
    mask = np.zeros((30, 50), np.uint8)
    mask[5:12, 20:45] = 1  # wide and off-centre: a transpose or flip would show
    path = tmp_path / f"mask{suffix}"
    nib.save(nib.Nifti1Image(mask, np.eye(4)), path)
    reader = open_image(path)
    assert isinstance(reader, NiftiReader)
    assert reader.size == (30, 50) and reader.channels == 1 and reader.dtype == np.uint8
    np.testing.assert_array_equal(reader.read((0, 0, 30, 50))[..., 0], mask)
    np.testing.assert_array_equal(reader.read((4, 19, 13, 46))[..., 0], mask[4:13, 19:46])
    np.testing.assert_array_equal(binary_to_index(reader.read((0, 0, 30, 50)), str(path)), mask)


def test_image_with_channels_and_rgb24(tmp_path, make_image):
    image = make_image(20, 24, 3, np.uint16)
    path = tmp_path / "vector.nii"
    nib.save(nib.Nifti1Image(image[:, :, None, None, :], np.eye(4)), path)
    reader = open_image(path)
    assert (reader.channels, reader.dtype) == (3, np.uint16)
    np.testing.assert_array_equal(reader.read((0, 0, 20, 24)), image)

    rgb = make_image(20, 24)
    records = np.zeros((20, 24), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for index, field in enumerate("RGB"):
        records[field] = rgb[..., index]
    path = tmp_path / "rgb24.nii"
    nib.save(nib.Nifti1Image(records, np.eye(4)), path)
    reader = open_image(path)
    assert (reader.channels, reader.dtype) == (3, np.uint8)
    np.testing.assert_array_equal(reader.read((0, 0, 20, 24)), rgb)


def test_volumes_are_refused(tmp_path):
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 5), np.int16), np.eye(4)), path)
    with pytest.raises(ImageFormatError, match="ct.nii.gz: holds a volume"):
        open_image(path)


def test_truncated_nifti_is_named(tmp_path):
    path = tmp_path / "cut.nii"
    nib.save(nib.Nifti1Image(np.ones((40, 40), np.uint8), np.eye(4)), path)
    path.write_bytes(path.read_bytes()[:900])
    with pytest.raises(ImageFormatError, match="cut.nii: the file is truncated"):
        open_image(path)
    gz = tmp_path / "cut.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((64, 64)), np.eye(4)), gz)
    gz.write_bytes(gz.read_bytes()[:2000])
    with pytest.raises(ImageFormatError, match="cut.nii.gz"):
        open_image(gz).read((0, 0, 64, 64))


def test_not_a_nifti_is_named(tmp_path):
    path = tmp_path / "fake.nii"
    path.write_bytes(b"hello" * 100)
    with pytest.raises(ImageFormatError, match="fake.nii"):
        open_image(path)
