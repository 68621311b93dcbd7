"""Pixel types are understood, never assumed: the same picture gives the same network input."""

import numpy as np
import pytest
import torch

from glmed.data.normalize import Normalization, full_intensity, to_model_input

EIGHT_BIT = np.array([[[0, 64, 255], [128, 32, 200]]], np.uint8)  # 1×2×3


@pytest.mark.parametrize("pixels", [
    EIGHT_BIT,
    EIGHT_BIT.astype(np.uint16) * np.uint16(257),        # the same picture as 16-bit
    EIGHT_BIT.astype(np.float32) / 255,                 # as skimage.img_as_float gives it
    EIGHT_BIT.astype(np.float64) / 255,
    torch.from_numpy(EIGHT_BIT),
], ids=["uint8", "uint16", "float32", "float64", "torch-uint8"])
def test_every_supported_type_gives_the_same_input(pixels):
    torch.testing.assert_close(to_model_input(pixels), to_model_input(EIGHT_BIT), rtol=0, atol=1e-5)


def test_bool_images_are_zero_or_full():
    assert full_intensity(np.array([[True, False]])) == 1.0


@pytest.mark.parametrize("pixels, seen", [
    (EIGHT_BIT.astype(np.float32), r"\[0, 255\]"),
    (np.array([[[-0.5, 0.2, 0.3]]], np.float32), r"\[-0.5, 0.3\]"),
])
def test_floats_outside_zero_one_are_refused_with_the_range_seen(pixels, seen):
    with pytest.raises(ValueError, match=f"ISIC_0000001.tif: float pixels must lie in \\[0, 1\\].*found {seen}"):
        to_model_input(pixels, name="ISIC_0000001.tif")
    # a stated scale is taken as given
    assert to_model_input(EIGHT_BIT.astype(np.float32), Normalization(max_value=255)).shape == (3, 1, 2)


def test_signed_integers_are_refused_naming_the_type():
    with pytest.raises(ValueError, match="photo.png: pixels of type int64 have no known full-intensity value"):
        to_model_input(EIGHT_BIT.astype(np.int64), name="photo.png")


def test_float_images_predict_like_their_8_bit_original():
    """The issue's case: skimage.img_as_float(img) gave 86% lesion where the uint8 image gave 18%."""
    import glmed

    model = glmed.GLNet(2, "resnet18", "g2l", fpn_channels=8, global_size=32, patch_size=32, overlap=4)
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    as_uint8 = glmed.predict(model, image).mask
    for same in (image.astype(np.float32) / 255, image.astype(np.uint16) * np.uint16(257)):
        assert (glmed.predict(model, same).mask == as_uint8).mean() > 0.99  # resampling rounds differently
    with pytest.raises(ValueError, match=r"float pixels must lie in \[0, 1\]"):
        glmed.predict(model, image.astype(np.float32))


def test_a_16_bit_tiff_file_is_scaled_by_its_type(tmp_path):
    import tifffile

    import glmed

    model = glmed.GLNet(2, "resnet18", "g2l", fpn_channels=8, global_size=32, patch_size=32, overlap=4)
    image = np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "sixteen.tif", image.astype(np.uint16) * np.uint16(257), photometric="rgb")
    tifffile.imwrite(tmp_path / "float.tif", image.astype(np.float32) / 255, photometric="rgb")
    expected = glmed.predict(model, image).mask
    # 16-bit and float views are resampled without 8-bit rounding, so a near-tie pixel may flip;
    # misread scales (a float image divided by 255, 16-bit by 255) would change nearly all of them
    for name in ("sixteen.tif", "float.tif"):
        assert (glmed.predict(model, tmp_path / name).mask == expected).mean() > 0.99
    tifffile.imwrite(tmp_path / "float255.tif", image.astype(np.float32), photometric="rgb")
    with pytest.raises(ValueError, match="float255.tif: float pixels"):
        glmed.predict(model, tmp_path / "float255.tif")
