"""Batch norm folded into the convolutions for inference: same outputs to float rounding, model untouched."""

import numpy as np
import pytest
import torch
from conftest import tiny_glnet
from torch import nn

import glmed
import glmed.models
from glmed.models.folding import fold_batch_norm
from glmed.models.glnet import GLNet


def with_random_statistics(model: nn.Module) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine parameters (fresh ones are nearly identities)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                if module.running_mean is not None:
                    module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                    module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                if module.affine:
                    module.weight.copy_(0.5 + 0.5 * torch.rand(n, generator=generator))
                    module.bias.copy_(0.1 * torch.randn(n, generator=generator))
    return model


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def assert_agree(folded: torch.Tensor, reference: torch.Tensor) -> None:
    scale = float(reference.abs().max())
    torch.testing.assert_close(folded, reference, rtol=1e-5, atol=1e-5 * max(scale, 1.0))


@pytest.mark.parametrize("sharing", ["bidirectional", "local_only"])
@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_a_folded_glnet_computes_what_the_model_computes(sharing, backbone, batch):
    model = with_random_statistics(GLNet(2, backbone, sharing, fpn_channels=8, global_size=64, patch_size=48,
                                         overlap=8).eval())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batch_norm(model)
    assert batch_norms(folded) == 0 and batch_norms(model) > 0
    assert not folded.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not changed
    with torch.no_grad():
        if sharing == "bidirectional":
            maps = [m.global_features(batch["global_image"]) for m in (model, folded)]
            for name in maps[0]:
                assert_agree(maps[1][name], maps[0][name])
        outputs = [m(**batch) for m in (model, folded)]
    for name in ("logits", "local_logits", "global_logits", "local_final"):
        reference, candidate = (getattr(o, name) for o in outputs)
        if reference is not None:
            assert_agree(candidate, reference)


def test_predict_with_a_folded_model_gives_the_same_mask():
    torch.manual_seed(0)
    model = with_random_statistics(tiny_glnet("bidirectional"))
    pixels = np.random.default_rng(0).integers(0, 256, (120, 130, 3), dtype=np.uint8)
    reference = glmed.predict(model, pixels)
    folded = glmed.predict(glmed.models.fold_batch_norm(model), pixels)
    assert np.array_equal(folded.mask, reference.mask)


def test_batch_norms_that_do_not_directly_follow_a_convolution_are_left_alone():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),  # folded
        nn.ReLU(), nn.BatchNorm2d(4),  # after a ReLU: kept
        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False),  # batch statistics always: kept
        nn.Conv2d(4, 5, 1, bias=False), nn.BatchNorm2d(5, affine=False),  # folded, a bias added
    )
    with_random_statistics(model)
    folded = fold_batch_norm(model)
    assert [type(m).__name__ for m in folded] == [
        "Conv2d", "Identity", "ReLU", "BatchNorm2d", "Conv2d", "BatchNorm2d", "Conv2d", "Identity"]
    assert folded[6].bias is not None and model[6].bias is None
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert_agree(folded(x), model.eval()(x))
