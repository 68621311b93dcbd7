import pytest

from glmed.models.coarse_to_fine import CoarseToFineConfig, CoarseToFineGLNet
from glmed.models.glnet import GLNet


def test_config_keeps_the_box_rule_and_round_trips():
    model = CoarseToFineGLNet(2, "resnet18", "g2l", target_ratio=0.5, per_component=True, fpn_channels=16,
                              global_size=64, patch_size=48, overlap=8)
    assert isinstance(model, GLNet)
    assert model.config.target_ratio == 0.5 and model.config.per_component
    rebuilt = CoarseToFineGLNet.from_config(model.config.to_dict())
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())


@pytest.mark.parametrize("bad, message", [
    (dict(sharing="global_only"), "needs both branches"),
    (dict(sharing="local_only"), "needs both branches"),
    (dict(target_ratio=0), "target_ratio"),
])
def test_bad_coarse_to_fine_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        CoarseToFineConfig(**bad)
