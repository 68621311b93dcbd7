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


def test_nan_pixels_are_refused():
    pixels = np.full((4, 4, 3), 0.5, np.float32)
    pixels[1, 1, 0] = np.nan
    with pytest.raises(ValueError, match="scan.nii: the image holds NaN pixels"):
        to_model_input(pixels, name="scan.nii")


def test_a_bool_image_is_seen_as_black_and_white_not_all_white():
    import glmed

    model = glmed.GLNet(2, "resnet18", "g2l", fpn_channels=8, global_size=32, patch_size=32, overlap=4)
    sparse = np.zeros((200, 200), dtype=bool)
    sparse[::10, ::10] = True  # 1% of pixels on: its downsampled view must stay mostly dark
    as_uint8 = glmed.predict(model, sparse.astype(np.uint8) * np.uint8(255)).mask
    np.testing.assert_array_equal(glmed.predict(model, sparse).mask, as_uint8)


def test_the_trainers_sample_builder_takes_a_stated_scale():
    from glmed.data.stage_samples import StageSampler
    from glmed.models.glnet import GLNetConfig
    from glmed.training.stages import paper_stages

    config = GLNetConfig(backbone="resnet18", fpn_channels=8, global_size=32, patch_size=32, overlap=4)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    label = np.zeros((64, 64), np.uint8)
    stage = paper_stages("g2l")[1]
    reference = StageSampler(config)(stage, image, label, np.random.default_rng(0))
    stated = StageSampler(config, normalization=Normalization(max_value=255))(
        stage, image.astype(np.float32), label, np.random.default_rng(0))
    torch.testing.assert_close(stated["patches"], reference["patches"])
    # the downsampled view of uint8 pixels is rounded to whole values, a float one is not
    torch.testing.assert_close(stated["global_image"], reference["global_image"], rtol=0, atol=0.01)
