"""Augmentation keeps image, label and boxes aligned, and is drawn from its own seeded stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glmed.data.augment import (
    Augmentation,
    AugmentDraw,
    AugmentedReader,
    ColourChange,
    as_augmentation,
    orient,
    unorient_box,
)
from glmed.data.normalize import DEFAULT_NORMALIZATION
from glmed.data.stage_samples import StageSampler
from glmed.io.base import ArrayReader
from glmed.models.coarse_to_fine import CoarseToFineConfig
from glmed.models.glnet import GLNetConfig
from glmed.training.loader import epoch_loader
from glmed.training.stages import paper_stages


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_mirrored_and_turned_reads_equal_the_whole_array_changed(flip: bool, turns: int) -> None:
    rng = np.random.default_rng(turns)
    array = rng.integers(0, 255, (23, 37, 3), dtype=np.uint8)
    view = AugmentedReader(ArrayReader(array), (23, 37), flip, turns)
    whole = orient(array, flip, turns)
    assert view.size == whole.shape[:2]
    for _ in range(10):
        r0, r1 = sorted(rng.choice(whole.shape[0] + 1, 2, replace=False))
        c0, c1 = sorted(rng.choice(whole.shape[1] + 1, 2, replace=False))
        np.testing.assert_array_equal(view.read((r0, c0, r1, c1)), whole[r0:r1, c0:c1])
        a0, b0, a1, b1 = unorient_box((r0, c0, r1, c1), (23, 37), flip, turns)
        np.testing.assert_array_equal(orient(array[a0:a1, b0:b1], flip, turns), whole[r0:r1, c0:c1])


def test_scaled_view_reads_match_its_whole_and_crops_keep_the_size() -> None:
    array = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    view = AugmentedReader(ArrayReader(array), (50, 45), True, 1)
    assert view.size == (45, 50)
    whole = view.read((0, 0, 45, 50)).astype(int)
    # the same pixels whether read alone or as part of the whole, up to Pillow's rounding
    # of its fixed-point filter weights, which depend on where the read starts (at most 2 levels)
    difference = np.abs(view.read((10, 7, 30, 41)) - whole[10:30, 7:41])
    assert difference.max() <= 2 and difference.mean() < 0.5
    wide = AugmentedReader(ArrayReader(array.astype(np.uint16)), (50, 45), True, 1)  # the numpy path
    np.testing.assert_array_equal(wide.read((10, 7, 30, 41)), wide.read((0, 0, 45, 50))[10:30, 7:41])
    crop = view.crop((10, 7, 30, 41))
    assert crop.size == (20, 34)
    assert crop.read((0, 0, 20, 34)).shape == (20, 34, 3)


def test_label_values_survive_resampling() -> None:
    label = np.zeros((50, 50, 1), dtype=np.uint8)
    label[10:30, 20:45] = 2
    view = AugmentedReader(ArrayReader(label), (61, 43), False, 3, nearest=True)
    values = np.unique(view.read((0, 0, *view.size)))
    assert set(values.tolist()) == {0, 2}
    assert set(np.unique(view.sampled((16, 16))).tolist()) == {0, 2}


def _marked_pair(size=(96, 128)) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with a blue square where the label is 1 and a red one where it is 2."""
    image = np.full((*size, 3), 128, dtype=np.uint8)
    label = np.zeros(size, dtype=np.uint8)
    image[20:36, 30:46] = (0, 0, 255)
    label[20:36, 30:46] = 1
    image[60:70, 90:120] = (255, 0, 0)
    label[60:70, 90:120] = 2
    return image, label


@pytest.mark.parametrize("seed", range(6))
def test_a_painted_label_moves_with_the_image_through_the_sample_builder(seed: int) -> None:
    image, label = _marked_pair()
    augmentation = Augmentation(flips=True, quarter_turns=True, scale=(0.7, 1.4), aspect=(0.8, 1.25))
    draw = augmentation.draw(np.random.default_rng(seed))
    reader, label_reader = draw.apply(ArrayReader(image), ArrayReader(label))
    config = CoarseToFineConfig(num_classes=3, global_size=32, patch_size=32, overlap=6)
    sampler = StageSampler(config, patches_per_image=64, box_jitter=0.1)
    for stage in paper_stages("bidirectional", (1, 1, 1)):
        sample = sampler(stage, reader, label_reader, np.random.default_rng(seed))
        if "patches" not in sample:
            continue
        # away from mark edges (bilinear blends there), blue marks are blue, red ones red, the rest grey
        patches, labels = sample["patches"], sample["patch_labels"]
        red, blue = patches[:, 0], patches[:, 2]
        ones, twos = labels == 1, labels == 2
        assert ones.any() or twos.any()
        core_ones = torch.nn.functional.max_pool2d((~ones)[:, None].float(), 3, 1, 1)[:, 0] == 0
        core_twos = torch.nn.functional.max_pool2d((~twos)[:, None].float(), 3, 1, 1)[:, 0] == 0
        assert bool((blue[core_ones] > red[core_ones]).all())
        assert bool((red[core_twos] > blue[core_twos]).all())
        background = torch.nn.functional.max_pool2d((labels > 0)[:, None].float(), 3, 1, 1)[:, 0] == 0
        background[:, [0, -1]] = False  # a border pixel's neighbour may be marked outside the patch
        background[:, :, [0, -1]] = False
        grey = DEFAULT_NORMALIZATION(np.full((1, 1, 3), 128, dtype=np.uint8))[:, 0, 0]
        assert bool((red[background] - grey[0]).abs().max() < 0.05)
        assert bool((blue[background] - grey[2]).abs().max() < 0.05)


def test_quarter_turn_moves_a_marked_pixel_where_numpy_puts_it() -> None:
    image, label = _marked_pair((8, 10))
    image[:] = 0
    label[:] = 0
    image[1, 2] = 255
    label[1, 2] = 1
    reader, label_reader = AugmentDraw(turns=1).apply(ArrayReader(image), ArrayReader(label[..., None]))
    turned = np.rot90(label, 1)
    position = tuple(np.argwhere(turned == 1)[0])
    assert reader.read((0, 0, *reader.size))[position].tolist() == [255, 255, 255]
    assert label_reader.read((0, 0, *label_reader.size))[..., 0][position] == 1


def test_colour_change_is_per_pixel_so_patches_match_the_whole() -> None:
    array = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    change = ColourChange(gamma=1.2, brightness=0.9, contrast=1.1, saturation=1.2, hue=0.03)
    view = AugmentedReader(ArrayReader(array), (20, 30), False, 0, change)
    whole = view.read((0, 0, 20, 30))
    np.testing.assert_array_equal(view.read((3, 4, 11, 19)), whole[3:11, 4:19])
    assert not np.array_equal(whole, array)
    grey = np.full((4, 4, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(ColourChange(hue=0.1, saturation=1.3)(grey), grey)  # no chroma to turn


def test_draws_use_a_fixed_amount_of_randomness_and_presets_validate() -> None:
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    Augmentation.none().draw(rng_a)
    Augmentation.preset("dermoscopy").draw(rng_b)
    assert rng_a.random() == rng_b.random()
    assert Augmentation.none().draw(np.random.default_rng(0)).is_identity
    assert as_augmentation("histology") == Augmentation.preset("histology")
    assert as_augmentation(None) == Augmentation.none()
    with pytest.raises(ValueError, match="unknown augmentation preset 'skin'"):
        Augmentation.preset("skin")
    with pytest.raises(ValueError, match="scale"):
        Augmentation(scale=(1.2, 0.8))


def test_loader_samples_are_augmented_reproducibly_and_differ_from_plain() -> None:
    rng = np.random.default_rng(0)
    pairs = []
    for index in range(4):
        image = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
        label = np.zeros((64, 80), dtype=np.uint8)
        label[10 + index : 40, 20:50 + index] = 1
        pairs.append((image, label))
    config = GLNetConfig(global_size=32, patch_size=32, overlap=6)
    stage = paper_stages("g2l", (1, 1))[1]

    def batches(augmentation, workers=0):
        loader = epoch_loader(pairs, [0, 1, 2, 3], StageSampler(config), stage, (0, 1, 1, 0, 1), 2, workers,
                              augmentation=augmentation)
        return list(loader)

    plain = batches(None)
    augmented = batches(Augmentation.preset("dermoscopy"))
    again = batches(Augmentation.preset("dermoscopy"), workers=2)
    for first, second in zip(augmented, again, strict=True):
        for key in first:
            assert torch.equal(first[key], second[key]), key
    assert not all(torch.equal(a["patches"], b["patches"]) for a, b in zip(plain, augmented, strict=True))


def test_a_zoom_never_shrinks_an_image_below_the_patch_size_so_batches_keep_one_patch_shape():
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8), np.ones((64, 80), dtype=np.uint8))
             for _ in range(4)]
    config = GLNetConfig(global_size=32, patch_size=64, overlap=8)
    shrink = Augmentation(scale=(0.5, 0.6))
    loader = epoch_loader(pairs, [0, 1, 2, 3], StageSampler(config), paper_stages("g2l", (1, 1))[1], (0, 1, 1, 0, 1),
                          2, augmentation=shrink)
    for batch in loader:  # would fail to batch patches of different shapes
        assert batch["patches"].shape[-2:] == (64, 64)
    image, label = AugmentDraw(scale=(0.5, 0.5)).apply(ArrayReader(pairs[0][0]), ArrayReader(pairs[0][1]), min_size=64)
    assert image.size == label.size == (64, 64)  # height kept (it was 64), width shrunk only to 64
