import numpy as np
import pytest

from glmed.data.stage_samples import StageSampler
from glmed.training.stages import paper_stages
from glmed.models.coarse_to_fine import CoarseToFineConfig
from glmed.models.glnet import GLNetConfig

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
