"""Masks to class indices (validated, the file named) and pixels to 8-bit RGB (the documented conversions)."""

import numpy as np
import pytest

from glmed.io import (
    LabelError,
    binary_to_index,
    deepglobe_to_index,
    flatten_alpha,
    index_to_deepglobe,
    mask_to_index,
    to_rgb8,
)
from glmed.io.labels import DEEPGLOBE_CLASSES, DEEPGLOBE_PALETTE


@pytest.mark.parametrize(
    "mask",
    [
        np.array([[0, 255], [255, 0]], np.uint8),
        np.array([[0, 1], [1, 0]], np.uint8),
        np.array([[False, True], [True, False]]),
        np.array([[0, 255], [255, 0]], np.uint16)[..., None],
        np.repeat(np.array([[0, 255], [255, 0]], np.uint8)[..., None], 3, axis=2),  # grey saved as RGB
        np.dstack([np.array([[0, 255], [255, 0]], np.uint8)] * 3 + [np.full((2, 2), 255, np.uint8)]),  # RGBA
    ],
)
def test_binary_masks_become_0_1(mask):
    np.testing.assert_array_equal(binary_to_index(mask, "m.png"), [[0, 1], [1, 0]])


def test_all_foreground_masks_in_either_convention():
    assert binary_to_index(np.full((2, 2), 255, np.uint8)).min() == 1
    assert binary_to_index(np.full((2, 2), 1, np.uint8)).min() == 1


@pytest.mark.parametrize(
    "mask, match",
    [
        (np.array([[0, 128, 255]], np.uint8), r"bad.png: .*found values 0 \(1 px\), 128 \(1 px\), 255 \(1 px\)"),
        (np.array([[0, 1, 255]], np.uint8), r"bad.png: .*0/255 or 0/1"),
        (np.array([[0, 7]], np.int32), r"bad.png: .*7 \(1 px\)"),
        (np.dstack([np.zeros((2, 2)), np.full((2, 2), 255), np.zeros((2, 2))]).astype(np.uint8), "bad.png: .*colour"),
    ],
)
def test_unexpected_mask_values_are_named_with_the_values(mask, match):
    with pytest.raises(LabelError, match=match):
        binary_to_index(mask, "bad.png")


def test_deepglobe_palette_round_trip_with_threshold():
    index = np.arange(7, dtype=np.uint8).reshape(1, 7).repeat(3, axis=0)
    colours = index_to_deepglobe(index)
    np.testing.assert_array_equal(deepglobe_to_index(colours), index)
    noisy = np.clip(colours.astype(int) + np.where(colours > 127, -20, 20), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(mask_to_index(noisy, "deepglobe"), index)
    assert len(DEEPGLOBE_CLASSES) == len(DEEPGLOBE_PALETTE) == 7
    assert DEEPGLOBE_CLASSES[int(deepglobe_to_index(np.array([[[0, 0, 255]]], np.uint8))[0, 0])] == "water"


def test_deepglobe_colours_outside_the_palette_are_listed():
    mask = index_to_deepglobe(np.zeros((4, 4), np.uint8))
    mask[0, :3] = (255, 0, 0)
    with pytest.raises(LabelError, match=r"dg_mask.png: .*\(255, 0, 0\) \(3 px\)"):
        deepglobe_to_index(mask, "dg_mask.png")
    with pytest.raises(LabelError, match="dg_mask.png: .*colour-coded RGB"):
        deepglobe_to_index(np.zeros((4, 4), np.uint8), "dg_mask.png")


def test_unknown_label_kind_lists_the_choices():
    with pytest.raises(ValueError, match="binary.*deepglobe"):
        mask_to_index(np.zeros((2, 2), np.uint8), "cityscapes")


def test_to_rgb8_conversions():
    grey = np.array([[0, 200]], np.uint8)
    np.testing.assert_array_equal(to_rgb8(grey), [[[0, 0, 0], [200, 200, 200]]])
    np.testing.assert_array_equal(
        to_rgb8(np.array([[0, 65535, 257 * 100]], np.uint16)), [[[0] * 3, [255] * 3, [100] * 3]]
    )
    np.testing.assert_array_equal(to_rgb8(np.array([[0.0, 1.0, 0.5]], np.float32))[0, :, 0], [0, 255, 128])
    np.testing.assert_array_equal(to_rgb8(np.array([[True, False]]))[0, :, 0], [255, 0])
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 51]]], np.uint8)
    np.testing.assert_array_equal(to_rgb8(rgba), [[[10, 20, 30], [255, 255, 255], [204, 204, 204]]])
    grey_alpha = np.array([[[100, 0]]], np.uint8)
    np.testing.assert_array_equal(to_rgb8(grey_alpha), [[[255, 255, 255]]])


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((2, 2, 5), np.uint8), "img.tif: expected a grey"),
        (np.array([[0.0, 2.0]]), r"img.tif: .*\[0, 1\].*found \[0.0, 2.0\]"),
        (np.array([[-5, 3]], np.int16), "img.tif: no conversion to 8 bits for dtype int16"),
    ],
)
def test_to_rgb8_refuses_what_it_cannot_convert(array, match):
    with pytest.raises(ValueError, match=match):
        to_rgb8(array, "img.tif")


def test_flatten_alpha_uses_the_given_background():
    rgba = np.array([[[0, 0, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(flatten_alpha(rgba, (240, 230, 220)), [[[240, 230, 220]]])
    rgb = np.zeros((1, 1, 3), np.uint8)
    assert flatten_alpha(rgb) is rgb
