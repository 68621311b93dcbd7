"""Mixed precision (bf16 on the CPU; fp16 refused there) and channels-last memory format."""

import math

import pytest
import torch

from glmed.data.samples import collate_global_local, global_local_sample
from glmed.data.synthetic import make_dermoscopy_image
from glmed.experiments.config import RecipeConfig
from glmed.geometry import patch_grid
from glmed.models.glnet import GLNet
from glmed.training.fit import fit
from glmed.training.stages import paper_stages
from glmed.training.trainer import GLNetTrainer

STAGES = paper_stages("bidirectional")


def tiny(seed=0):
    torch.manual_seed(seed)
    return GLNet(2, "resnet18", "bidirectional", fpn_channels=8, global_size=64, patch_size=48, overlap=8)


@pytest.fixture(scope="module")
def batch():
    """An image with its 6 patches and labels, collated."""
    image, label = make_dermoscopy_image((96, 80), 0)
    return collate_global_local([global_local_sample(image, patch_grid((96, 80), 48, 8).boxes, label, global_size=64)])


@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_a_bf16_step_runs_on_the_cpu_and_learns(stage, batch):
    model = tiny()
    trainer = GLNetTrainer(model, global_lr=1e-3, local_lr=1e-3, patches_per_step=3, amp="bf16")
    optimizer = trainer.optimizer(stage)
    trainer.prepare(stage)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    total, terms = trainer.losses(stage, batch)
    assert total.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())
    result = trainer.step(stage, batch, optimizer)
    assert all(math.isfinite(value) for value in result.values())
    params = dict(model.named_parameters())
    assert all(params[n].dtype == torch.float32 for n in trained)  # autocast computes in bf16, keeps fp32 weights
    assert any(not torch.equal(params[n], before) for n, before in trained.items())


def test_a_bf16_loss_is_close_to_the_float32_one(batch):
    stage = STAGES[1]
    losses = {amp: float(GLNetTrainer(tiny(), amp=amp).losses(stage, batch)[0].detach()) for amp in ("off", "bf16")}
    assert losses["bf16"] == pytest.approx(losses["off"], rel=0.05)


def test_fp16_on_the_cpu_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="fp16.*CUDA.*bf16"):
        GLNetTrainer(tiny(), amp="fp16")
    with pytest.raises(ValueError, match="fp16.*CUDA.*bf16"):
        fit(tiny(), [make_dermoscopy_image((96, 96), 0)], amp="fp16", progress=False, log=None)


def test_an_unknown_amp_mode_names_the_choices():
    with pytest.raises(ValueError, match="unknown amp mode 'half'.*bf16.*fp16.*off"):
        GLNetTrainer(tiny(), amp="half")


@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_channels_last_gives_the_default_format_s_loss_and_gradients(stage, batch):
    results = []
    for channels_last in (False, True):
        model = tiny()
        trainer = GLNetTrainer(model, patches_per_step=None, channels_last=channels_last)
        if channels_last:
            assert model.global_branch.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        trainer.prepare(stage)
        total, _ = trainer.losses(stage, batch)
        total.backward()
        results.append((total.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (default, default_grads), (last, last_grads) = results
    torch.testing.assert_close(last, default, rtol=1e-5, atol=1e-6)
    assert last_grads.keys() == default_grads.keys()
    for name, grad in default_grads.items():
        torch.testing.assert_close(last_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_the_recipe_config_checks_amp():
    assert not RecipeConfig(demo=True, amp="bf16", device="cpu", channels_last=True).problems()
    problems = "\n".join(RecipeConfig(demo=True, amp="fp16", device="cpu").problems())
    assert "--amp fp16" in problems and "use --amp bf16" in problems
    assert "--amp half: off, bf16 or fp16" in RecipeConfig(demo=True, amp="half").problems()


def test_the_recipe_flags(capsys):
    import argparse

    from glmed.experiments.config import add_config_arguments, given_values

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, RecipeConfig)
    assert given_values(parser.parse_args(["--amp", "bf16", "--channels-last"]), RecipeConfig) == {
        "amp": "bf16", "channels_last": True}
    assert given_values(parser.parse_args([]), RecipeConfig) == {}  # off and False: the defaults
    with pytest.raises(SystemExit):
        parser.parse_args(["--amp", "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err
