import ast
import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import glmed.data.stage_samples as stage_samples_module
from glmed.data.stage_samples import StageSampler, choose_patches, training_box
from glmed.data.transforms import (
    RandForegroundBox,
    RandForegroundBoxd,
    RandGlobalLocald,
    RandStageSampled,
    seed_from,
)
from glmed.geometry import patch_grid
from glmed.io.base import ArrayReader
from glmed.models.coarse_to_fine import CoarseToFineConfig
from glmed.models.glnet import GLNetConfig
from glmed.training.stages import paper_stages

SIZES = dict(backbone="resnet18", fpn_channels=16, global_size=64, patch_size=48, overlap=8)


def lesion_image(size=(300, 400), box=(100, 150, 160, 230)):
    image = np.random.default_rng(0).integers(0, 80, size + (3,), dtype=np.uint8)
    label = np.zeros(size, dtype=np.uint8)
    label[box[0]:box[2], box[1]:box[3]] = 1
    image[label == 1] += 120
    return image, label


def test_global_stage_sees_the_whole_image_without_patches():
    sampler = StageSampler(GLNetConfig(sharing="g2l", **SIZES))
    sample = sampler(paper_stages("g2l")[0], *lesion_image(), np.random.default_rng(0))
    assert sample["global_image"].shape == (3, 64, 64) and sample["global_label"].shape == (64, 64)
    assert "patches" not in sample and len(sample["boxes"]) == 0
    assert sample["image_size"].tolist() == [300, 400]


def test_plain_local_stage_draws_a_few_patches_of_the_whole_image():
    sampler = StageSampler(GLNetConfig(sharing="g2l", **SIZES), patches_per_image=3)
    sample = sampler(paper_stages("g2l")[1], *lesion_image(), np.random.default_rng(0))
    assert sample["patches"].shape == (3, 3, 48, 48) and sample["patch_labels"].shape == (3, 48, 48)
    assert sample["image_size"].tolist() == [300, 400]


def test_coarse_to_fine_local_stage_crops_a_jittered_box_around_the_lesion():
    image, label = lesion_image()
    sampler = StageSampler(CoarseToFineConfig(sharing="g2l", **SIZES), patches_per_image=2, box_jitter=0.1)
    stage = paper_stages("g2l")[1]
    for seed in range(5):
        sample = sampler(stage, image, label, np.random.default_rng(seed))
        height, width = sample["image_size"].tolist()
        # the region is about twice the lesion (1:1 relaxed, jittered) and no smaller than a patch
        assert 48 <= height < 300 and 48 <= width < 400
        assert 0.2 < sample["global_label"].float().mean() < 0.8
        assert len(sample["patches"]) == 2


def test_collect_stage_takes_every_patch_of_the_region():
    image, label = lesion_image()
    config = CoarseToFineConfig(sharing="bidirectional", **SIZES)
    sampler = StageSampler(config, patches_per_image=1)
    sample = sampler(paper_stages("bidirectional")[2], image, label, np.random.default_rng(0))
    from glmed.geometry import patch_grid

    assert len(sample["patches"]) == len(patch_grid(tuple(sample["image_size"].tolist()), 48, 8)) > 1


def test_coarse_to_fine_sampler_without_foreground_uses_the_whole_image():
    image, _ = lesion_image()
    sampler = StageSampler(CoarseToFineConfig(sharing="g2l", **SIZES))
    sample = sampler(paper_stages("g2l")[1], image, np.zeros((300, 400), np.uint8), np.random.default_rng(0))
    assert sample["image_size"].tolist() == [300, 400]


@pytest.mark.parametrize("bad", [dict(patches_per_image=0), dict(box_jitter=1.0)])
def test_bad_sampler_settings_are_refused(bad):
    with pytest.raises(ValueError):
        StageSampler(GLNetConfig(**SIZES), **bad)


# -- one sample builder: the MONAI path is the trainer's path -------------------------


TINY = {"backbone": "resnet18", "fpn_channels": 16, "patch_size": 48, "overlap": 8}
CONFIGS = {
    "glnet": GLNetConfig(sharing="bidirectional", global_size=32, **TINY),
    "coarse_to_fine": CoarseToFineConfig(sharing="bidirectional", global_size=64, **TINY),
}
STAGES = dict(zip(("global", "local", "collect_local"), paper_stages("bidirectional")))


def blob_image(size=(96, 128), seed=0):
    """A small RGB uint8 image with one elliptic blob as its 0/1 label."""
    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[: size[0], : size[1]]
    label = (((rows - 40) / 18.0) ** 2 + ((cols - 70) / 25.0) ** 2 <= 1).astype(np.uint8)
    image = rng.integers(0, 100, size + (3,), dtype=np.uint8)
    image[label == 1] += 120
    return image, label


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("stage_name", sorted(STAGES))
def test_monai_transform_and_trainer_build_identical_samples(config_name, stage_name):
    config, stage = CONFIGS[config_name], STAGES[stage_name]
    image, label = blob_image()
    sizes = set()
    for seed in range(6):
        transform = RandStageSampled(("image", "label"), config=config, stage=stage).set_random_state(seed)
        monai_sample = transform({"image": np.moveaxis(image, -1, 0), "label": label[None], "id": seed})
        rng = np.random.default_rng(seed_from(np.random.RandomState(seed)))
        trainer_sample = StageSampler(config)(stage, image, label, rng)
        assert set(monai_sample) == set(trainer_sample) | {"id"}
        for key, value in trainer_sample.items():
            assert torch.equal(monai_sample[key], value), key
        sizes.add(tuple(trainer_sample["image_size"].tolist()))
    if config_name == "coarse_to_fine":
        assert len(sizes) > 1  # jittered boxes were cropped (and, for the global stage, sometimes not)
    else:
        assert sizes == {(96, 128)}


def test_rand_stage_sampled_is_reproducible_and_follows_its_stage():
    image, label = blob_image()
    data = {"image": np.moveaxis(image, -1, 0), "label": label[None]}
    transform = RandStageSampled(config=CONFIGS["coarse_to_fine"], stage=STAGES["local"], patches_per_image=1)
    first = transform.set_random_state(3)(data)
    again = transform.set_random_state(3)(data)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert "image" not in first and "label" not in first and len(first["patches"]) == 1
    transform.stage = STAGES["global"]
    assert "patches" not in transform(data)
    kept = RandStageSampled(config=CONFIGS["glnet"], stage=STAGES["local"], keep_source=True)(data)
    assert kept["image"] is data["image"]
    with pytest.raises(KeyError, match="label"):
        transform({"image": data["image"]})
    with pytest.raises(ValueError, match=r"holds values \[0, 255\]"):
        transform({"image": data["image"], "label": label[None] * 255})


def test_any_object_with_the_two_flags_is_a_stage():
    image, label = blob_image()
    stage = SimpleNamespace(global_only=False, collect_local=False)
    sample = StageSampler(CONFIGS["glnet"], patches_per_image=2)(stage, image, label, np.random.default_rng(0))
    assert sample["patches"].shape == (2, 3, 48, 48)


def test_stage_samples_does_not_import_the_training_package():
    tree = ast.parse(inspect.getsource(stage_samples_module))
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [name for name in imported if name and name.startswith("glmed.training")]


def test_rand_foreground_box_is_the_trainers_box():
    config = CONFIGS["coarse_to_fine"]
    _, label = blob_image()
    for seed in range(5):
        transform = RandForegroundBoxd(global_size=config.global_size, patch_size=config.patch_size)
        box = transform.set_random_state(seed)({"label": label[None]})["box"]
        rng = np.random.default_rng(seed_from(np.random.RandomState(seed)))
        assert tuple(box.tolist()) == StageSampler(config).training_box(ArrayReader(label), rng)
        assert box[2] - box[0] >= 48 and box[3] - box[1] >= 48  # grown to one patch


def test_rand_foreground_box_defaults_are_the_trainers():
    boxer = RandForegroundBox()
    assert boxer.jitter == StageSampler(GLNetConfig()).box_jitter == 0.15
    assert boxer.global_size == GLNetConfig().global_size == 508
    assert boxer.patch_size == GLNetConfig().patch_size == 508
    # a small lesion in a large image: the box is grown to one 508-pixel patch
    label = np.zeros((1, 900, 1200), np.uint8)
    label[0, 400:440, 500:560] = 1
    box = boxer.set_random_state(0)(label)
    assert box[2] - box[0] == 508 and box[3] - box[1] == 508
    assert box[0] <= 400 and box[1] <= 500 and box[2] >= 440 and box[3] >= 560


def test_training_box_is_none_without_foreground_and_takes_arrays_or_readers():
    empty = np.zeros((60, 80), np.uint8)
    assert training_box(empty, 32, 48, 1.0, False, 0.15, np.random.default_rng(0)) is None
    _, label = blob_image()
    from_array = training_box(label, 32, 48, 1.0, False, 0.15, np.random.default_rng(1))
    from_reader = training_box(ArrayReader(label), (32, 32), (48, 48), 1.0, False, 0.15, np.random.default_rng(1))
    assert from_array == from_reader


def test_patch_subsets_share_one_rule():
    assert choose_patches(3, 4, np.random.default_rng(0)).tolist() == [0, 1, 2]
    untouched = np.random.default_rng(0)
    choose_patches(4, 4, untouched)  # everything fits: nothing is drawn
    assert untouched.random() == np.random.default_rng(0).random()
    chosen = choose_patches(20, 5, np.random.default_rng(0))
    assert len(chosen) == 5 and chosen.tolist() == sorted(set(chosen.tolist()))
    with pytest.raises(ValueError, match="at least 1"):
        choose_patches(5, 0, np.random.default_rng(0))
    image, label = blob_image((150, 180))
    transform = RandGlobalLocald(num_patches=3, global_size=32, patch_size=48, overlap=8).set_random_state(7)
    sample = transform({"image": np.moveaxis(image, -1, 0), "label": label[None]})
    grid = patch_grid((150, 180), 48, 8).boxes
    expected = grid[choose_patches(len(grid), 3, np.random.RandomState(7))]
    np.testing.assert_array_equal(sample["boxes"].numpy(), expected)


def test_widen_box_moves_each_edge_its_share_of_the_way_to_the_border():
    from glmed.data.stage_samples import widen_box

    box, size = (100, 150, 160, 230), (300, 400)
    assert widen_box(box, size, (0, 0, 0, 0)) == box
    assert widen_box(box, size, (1, 1, 1, 1)) == (0, 0, 300, 400)
    assert widen_box(box, size, (0.5, 0.0, 0.5, 1.0)) == (50, 150, 230, 400)


def test_widening_gives_loose_boxes_at_its_rate_and_never_cuts_the_tight_one():
    _, label = lesion_image()
    tight, loose = [], []
    for seed in range(200):
        plain = training_box(label, 64, 48, 1.0, False, 0.0, np.random.default_rng(seed))
        widened = training_box(label, 64, 48, 1.0, False, 0.0, np.random.default_rng(seed), widening=0.3)
        assert plain is not None and widened is not None
        # widening only moves edges outward: the unwidened box is always inside
        assert widened[:2] <= plain[:2] and widened[2] >= plain[2] and widened[3] >= plain[3]
        (tight if widened == plain else loose).append(widened)
    assert 0.2 < len(loose) / 200 < 0.4
    # loose boxes spread from just outside the tight box out to the image's borders
    areas = [(b[2] - b[0]) * (b[3] - b[1]) / (300 * 400) for b in loose]
    assert min(areas) < 0.25 and max(areas) > 0.6
    # with no widening the draws are the ones training made before the option existed
    assert training_box(label, 64, 48, 1.0, False, 0.15, np.random.default_rng(3), widening=0.0) == \
        training_box(label, 64, 48, 1.0, False, 0.15, np.random.default_rng(3))


def test_sampler_and_monai_transforms_widen_alike():
    config = CONFIGS["coarse_to_fine"]
    _, label = blob_image()
    for seed in range(5):
        transform = RandForegroundBoxd(global_size=config.global_size, patch_size=config.patch_size, widening=0.7)
        box = transform.set_random_state(seed)({"label": label[None]})["box"]
        rng = np.random.default_rng(seed_from(np.random.RandomState(seed)))
        assert tuple(box.tolist()) == StageSampler(config, box_widening=0.7).training_box(ArrayReader(label), rng)
    with pytest.raises(ValueError, match="box_widening"):
        StageSampler(config, box_widening=1.5)
    with pytest.raises(ValueError, match="widening"):
        RandForegroundBox(widening=-0.1)
