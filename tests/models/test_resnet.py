import pytest
import torch

from glmed.models.glnet import GLNet
from glmed.models.resnet import ResNetEncoder, load_pretrained

# A sample of the keys and shapes of the standard ImageNet ResNet state dicts.
STANDARD_KEYS = {
    "resnet50": {"conv1.weight": (64, 3, 7, 7), "bn1.running_mean": (64,),
                 "layer1.0.downsample.0.weight": (256, 64, 1, 1),
                 "layer1.0.conv3.weight": (256, 64, 1, 1), "layer3.5.bn2.num_batches_tracked": (),
                 "layer4.2.bn3.running_var": (2048,), "layer4.0.downsample.1.weight": (2048,)},
    "resnet18": {"layer1.1.conv2.weight": (64, 64, 3, 3), "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                 "layer4.1.bn2.bias": (512,)},
}
STANDARD_COUNTS = {"resnet18": 122 - 2, "resnet34": 218 - 2, "resnet50": 320 - 2}  # without fc.weight / fc.bias


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_encoder_uses_the_standard_parameter_names(name):
    state = ResNetEncoder(name).state_dict()
    assert len(state) == STANDARD_COUNTS[name]
    for key, shape in STANDARD_KEYS.get(name, {}).items():
        assert tuple(state[key].shape) == shape


def test_encoder_strides_and_channels():
    features = ResNetEncoder("resnet18")(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [(1, 64, 16, 24), (1, 128, 8, 12), (1, 256, 4, 6), (1, 512, 2, 3)]


def test_a_standard_state_dict_file_loads_into_both_branches(tmp_path):
    source = ResNetEncoder("resnet18")
    for p in source.parameters():
        torch.nn.init.normal_(p)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.fc.weight"], state["module.fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save({"state_dict": state}, path)
    model = GLNet(2, "resnet18", "g2l", fpn_channels=16, pretrained_backbone=path)
    for branch in (model.global_branch, model.local_branch):
        for key, value in source.state_dict().items():
            torch.testing.assert_close(branch.encoder.state_dict()[key], value)


def test_a_state_dict_for_another_depth_is_refused_with_the_file_name(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(ResNetEncoder("resnet50").state_dict(), path)
    with pytest.raises(ValueError, match="r50.pth.*resnet18"):
        load_pretrained(ResNetEncoder("resnet18"), path)
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        load_pretrained(ResNetEncoder("resnet18"), bad)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_pretrained(ResNetEncoder("resnet18"), tmp_path / "missing.pth")


def test_a_published_file_without_batchnorm_counters_loads(tmp_path):
    """ImageNet files predating num_batches_tracked (e.g. resnet50-19c8e357.pth) must load."""
    source = ResNetEncoder("resnet18")
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18-old.pth"
    torch.save(state, path)
    target = ResNetEncoder("resnet18")
    load_pretrained(target, path)
    torch.testing.assert_close(target.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
