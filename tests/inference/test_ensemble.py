"""Several models predicting as one: the mean of their probabilities, one averaged coarse pass."""

import numpy as np
import pytest
import torch

import glmed
from glmed.geometry import coarse_to_fine_boxes
from glmed.inference import inferer as inferer_module
from glmed.models.ensemble import CoarseToFineEnsemble, GLNetEnsemble, ensemble
from tests.inference.test_inferer_coarse_to_fine import ScriptedCoarse, lesion_coarse_mask


def tiny(seed, sharing="g2l", **settings):
    torch.manual_seed(seed)
    return glmed.GLNet(2, "resnet18", sharing, fpn_channels=16, global_size=64, patch_size=48, overlap=8, **settings)


@pytest.fixture
def recorded(monkeypatch):
    """Every batch of per-patch probabilities the inferer computes, in order."""
    batches = []
    original = inferer_module.GlobalLocalInferer._local_probabilities

    def local_probabilities(self, *args, **kwargs):
        probabilities = original(self, *args, **kwargs)
        batches.append(probabilities.detach().clone())
        return probabilities

    monkeypatch.setattr(inferer_module.GlobalLocalInferer, "_local_probabilities", local_probabilities)
    return batches


@pytest.mark.parametrize("sharing", ["g2l", "bidirectional"])
def test_an_ensemble_averages_its_members_probabilities(recorded, sharing):
    first, second = tiny(1, sharing), tiny(2, sharing)
    image = np.random.default_rng(0).integers(0, 255, (90, 110, 3), dtype=np.uint8)
    glmed.predict(first, image)
    alone_first = torch.cat(recorded)
    recorded.clear()
    glmed.predict(second, image)
    alone_second = torch.cat(recorded)
    recorded.clear()
    together = glmed.predict([first, second], image)
    mean = torch.cat(recorded)
    assert not torch.allclose(alone_first, alone_second, atol=1e-3)  # the members do disagree
    torch.testing.assert_close(mean, (alone_first + alone_second) / 2, atol=1e-6, rtol=1e-5)
    assert together.mask.shape == (90, 110)
    assert together.patches == len(alone_first) == len(glmed.geometry.patch_grid((90, 110), 48, 8))
    assert first.training and second.training  # the members are left in the mode they were in


def test_the_heads_return_the_log_of_the_mean_probability():
    first, second = tiny(1), tiny(2)
    both = ensemble([first, second])
    assert isinstance(both, GLNetEnsemble) and ensemble(first) is first and ensemble([first]) is first
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = both.global_features(image)
        expected = (first.global_logits(first.global_features(image), (64, 64)).softmax(1)
                    + second.global_logits(second.global_features(image), (64, 64)).softmax(1)) / 2
        torch.testing.assert_close(both.global_logits(maps, (64, 64)).softmax(1), expected, atol=1e-6, rtol=1e-5)


def test_coarse_to_fine_members_draw_one_set_of_boxes_from_their_mean_coarse_probabilities():
    seen_by_one = lesion_coarse_mask(top=5, left=5, side=6)
    seen_by_both = seen_by_one.copy()
    seen_by_both[40:50, 40:50] = 1  # a second region the second model alone is sure of
    first, second = ScriptedCoarse(seen_by_one), ScriptedCoarse(seen_by_both)
    image = np.zeros((640, 640, 3), dtype=np.uint8)
    together = glmed.predict([first, second], image, per_component=True)
    assert isinstance(ensemble([first, second]), CoarseToFineEnsemble)
    with torch.no_grad():
        mean = (first.global_logits(None, (64, 64)).softmax(1) + second.global_logits(None, (64, 64)).softmax(1)) / 2
    expected = coarse_to_fine_boxes(mean[0].argmax(0).numpy(), (640, 640), 1.0, (48, 48), per_component=True)
    assert together.boxes == expected
    union = coarse_to_fine_boxes(seen_by_both, (640, 640), 1.0, (48, 48), per_component=True)
    assert len(union) == 2 and len(expected) == 1  # the mean, not the union of the members' boxes


def test_members_of_different_architectures_or_kinds_are_refused():
    with pytest.raises(ValueError, match="fpn_channels"):
        ensemble([tiny(1), glmed.GLNet(2, "resnet18", "g2l", fpn_channels=8, global_size=64, patch_size=48, overlap=8)])
    with pytest.raises(ValueError, match="one kind"):
        ensemble([tiny(1), ScriptedCoarse(lesion_coarse_mask())])
    with pytest.raises(TypeError, match="train each member"):
        ensemble([tiny(1), tiny(2)])(torch.zeros(1, 3, 64, 64))


def test_an_ensemble_streams_to_a_tiff_like_one_model(tmp_path):
    from glmed.io import open_image

    first, second = tiny(1), tiny(2)
    image = np.random.default_rng(0).integers(0, 255, (90, 110, 3), dtype=np.uint8)
    written = glmed.predict_to_tiff([first, second], image, tmp_path / "mask.tif", tissue=False)
    with open_image(written.path) as mask:
        stored = mask.read((0, 0, 90, 110))[..., 0]
    np.testing.assert_array_equal(stored // 255, glmed.predict([first, second], image).mask)
