import numpy as np
import pytest
import torch

from glmed.data.samples import collate_global_local, global_local_sample
from glmed.geometry import patch_grid
from glmed.models.glnet import GLNet
from glmed.training.stages import GLOBAL_PARTS, Stage, paper_stages
from glmed.training.trainer import GLNetTrainer


def tiny(sharing):
    return GLNet(2, "resnet18", sharing, fpn_channels=16, global_size=64, patch_size=48, overlap=8)


def bright_square_batch(count=2, size=(96, 80)):
    """Images whose label is their bright square: learnable in a few steps."""
    samples = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        image = rng.integers(0, 60, size + (3,), dtype=np.uint8)
        label = np.zeros(size, dtype=np.uint8)
        r, c = rng.integers(10, 40, 2)
        label[r:r + 30, c:c + 30] = 1
        image[label == 1] += 150
        samples.append(global_local_sample(image, patch_grid(size, 48, 8).boxes, label, global_size=64))
    return collate_global_local(samples)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if v.is_floating_point())


@pytest.mark.parametrize("mode, names", [
    ("global_only", ["global"]), ("local_only", ["local"]), ("g2l", ["global", "local"]),
    ("bidirectional", ["global", "local", "bidirectional"]),
])
def test_paper_schedule_per_mode(mode, names):
    stages = paper_stages(mode, epochs=(2, 3, 4))
    assert [s.name for s in stages] == names
    assert [s.collect_local for s in stages] == [n == "bidirectional" for n in names]


def test_stage_rejects_unknown_parts():
    with pytest.raises(ValueError, match="trainable parts"):
        Stage("odd", ("decoder",))


def test_local_stage_leaves_the_global_branch_unchanged():
    model = tiny("g2l")
    trainer = GLNetTrainer(model)
    stage = paper_stages("g2l")[1]
    optimizer = trainer.optimizer(stage)
    trainer.prepare(stage)
    global_before = snapshot(model.global_branch)
    local_before = snapshot(model.local_branch)
    terms = trainer.step(stage, bright_square_batch(), optimizer)
    assert set(terms) == {"loss", "main", "local", "global", "fmreg"}
    assert not changed(global_before, model.global_branch)  # weights and BatchNorm statistics alike
    assert changed(local_before, model.local_branch)


def test_bidirectional_stage_teaches_the_global_branch_to_listen_and_nothing_else():
    model = tiny("bidirectional")
    trainer = GLNetTrainer(model, patches_per_step=3, global_lr=1e-2)
    stage = paper_stages("bidirectional")[2]
    optimizer = trainer.optimizer(stage)
    trainer.prepare(stage)
    batch = bright_square_batch()
    args = (batch["global_image"], batch["patches"], batch["boxes_normalized"].float(), batch["image_index"])
    global_before, local_before = snapshot(model.global_branch), snapshot(model.local_branch)
    model.eval()
    with torch.no_grad():
        alone_before = model.global_features(batch["global_image"])["final"]
        listening_before = model.global_features(batch["global_image"], trainer.collect_local_context(*args))["final"]
    trainer.prepare(stage)
    trainer.step(stage, batch, optimizer)
    assert not changed(local_before, model.local_branch)
    after = model.global_branch.state_dict()
    moved = {k for k in after if after[k].is_floating_point() and not torch.equal(global_before[k], after[k])}
    assert moved and all("partner_conv" in k for k in moved)  # only the local→global convolutions learned
    model.eval()
    with torch.no_grad():
        alone_after = model.global_features(batch["global_image"])["final"]
        listening_after = model.global_features(batch["global_image"], trainer.collect_local_context(*args))["final"]
    # the global branch's features with local context changed (G⇄L); without it, not at all
    assert not torch.allclose(listening_before, listening_after)
    torch.testing.assert_close(alone_before, alone_after, atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["global_only", "g2l"])
def test_loss_falls_on_a_learnable_problem(mode):
    model = tiny(mode)
    trainer = GLNetTrainer(model, global_lr=2e-3, local_lr=2e-3, loss=None)
    stage = paper_stages(mode)[-1]
    optimizer = trainer.optimizer(stage)
    batch = bright_square_batch()
    losses = [trainer.train_epoch(stage, [batch], optimizer)["loss"] for _ in range(8)]
    assert losses[-1] < 0.7 * losses[0]


def test_global_stage_on_a_two_branch_model_touches_global_parts_only():
    model = tiny("g2l")
    trainer = GLNetTrainer(model)
    stage = Stage("global", GLOBAL_PARTS)
    local_before = snapshot(model.local_branch)
    terms = trainer.train_epoch(stage, [bright_square_batch()], trainer.optimizer(stage))
    assert set(terms) == {"loss", "global"}
    assert not changed(local_before, model.local_branch)


def test_a_custom_stage_training_the_global_branch_includes_its_listening_convolutions():
    model = tiny("bidirectional")
    trainer = GLNetTrainer(model)
    stage = Stage("whole global", GLOBAL_PARTS, collect_local=True)
    trainer.prepare(stage)
    assert all(p.requires_grad for p in model.global_partner.parameters())
    assert not any(p.requires_grad for p in model.local_branch.parameters())
    overlapping = Stage("both", ("global_branch", "global_partner"))
    params = [p for group in trainer.optimizer(overlapping).param_groups for p in group["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.global_branch.parameters()))


def test_bidirectional_stage_leaves_out_terms_that_could_only_reach_frozen_parts():
    model = tiny("bidirectional")
    trainer = GLNetTrainer(model, patches_per_step=3)
    stage = paper_stages("bidirectional")[2]
    terms = trainer.train_epoch(stage, [bright_square_batch()], trainer.optimizer(stage))
    assert set(terms) == {"loss", "main", "global"}


def test_the_trainers_collect_pass_stitches_what_a_full_local_pass_would_bit_for_bit(monkeypatch):
    model = tiny("bidirectional").eval()
    trainer = GLNetTrainer(model, collect_batch_size=3)
    batch = bright_square_batch()
    args = (batch["global_image"], batch["patches"], batch["boxes_normalized"].float(), batch["image_index"])
    partial = trainer.collect_local_context(*args)  # the local branch stops at the shared maps
    local_features = type(model).local_features
    monkeypatch.setattr(model, "local_features", lambda *a, points=None, **k: local_features(model, *a, **k))
    full = trainer.collect_local_context(*args)  # forced to compute every map, as before
    assert set(partial) == set(full) and all(torch.equal(partial[name], full[name]) for name in full)


@pytest.mark.parametrize("stage_index", [0, 1])
def test_a_boundary_weight_adds_its_term_to_global_and_two_branch_steps(stage_index):
    from glmed.models.losses import GLNetLoss

    stage = paper_stages("g2l")[stage_index]
    plain = GLNetTrainer(tiny("g2l"))
    plain_terms = plain.train_epoch(stage, [bright_square_batch()], plain.optimizer(stage))
    trainer = GLNetTrainer(tiny("g2l"), GLNetLoss(boundary_weight=2.0, boundary_width=2))
    terms = trainer.train_epoch(stage, [bright_square_batch()], trainer.optimizer(stage))
    assert "boundary" not in plain_terms
    assert set(terms) == set(plain_terms) | {"boundary"}
    assert terms["boundary"] > 0  # the bright squares have edges in every batch
    assert terms["loss"] == pytest.approx(sum(v for k, v in terms.items() if k != "loss"), rel=1e-5)


@pytest.mark.parametrize("stage_index", [0, 1])
def test_a_dice_weight_adds_its_term_to_global_and_two_branch_steps(stage_index):
    from glmed.models.losses import GLNetLoss

    stage = paper_stages("g2l")[stage_index]
    plain = GLNetTrainer(tiny("g2l"))
    plain_terms = plain.train_epoch(stage, [bright_square_batch()], plain.optimizer(stage))
    trainer = GLNetTrainer(tiny("g2l"), GLNetLoss(dice_weight=0.5))
    terms = trainer.train_epoch(stage, [bright_square_batch()], trainer.optimizer(stage))
    assert "dice" not in plain_terms and set(terms) == set(plain_terms) | {"dice"}
    assert 0 < terms["dice"] <= 0.5  # a weighted soft Dice loss lies in [0, weight]
    assert terms["loss"] == pytest.approx(sum(v for k, v in terms.items() if k != "loss"), rel=1e-5)


def test_the_bidirectional_stage_trains_its_listening_convolutions_at_their_own_rate():
    model = tiny("bidirectional")
    stage = paper_stages("bidirectional")[2]
    rates = {}
    for trainer in (GLNetTrainer(model, global_lr=1e-3, local_lr=5e-4),
                    GLNetTrainer(model, global_lr=1e-3, local_lr=5e-4, listening_lr=3e-4)):
        optimizer = trainer.optimizer(stage)
        by_parameter = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        rates[trainer.listening_lr] = ({by_parameter[id(p)] for p in model.global_partner.parameters()},
                                       {by_parameter[id(p)] for p in model.aggregate.parameters()})
    (default, (default_partner, default_aggregate)), (given, (given_partner, given_aggregate)) = rates.items()
    assert default == pytest.approx(1e-4) and default_partner == {default} and default_aggregate == {5e-4}
    assert given == 3e-4 and given_partner == {3e-4} and given_aggregate == {5e-4}
    # a stage that trains the whole global branch (and does not name the listening part) keeps one rate for it
    whole = Stage("global+listening", GLOBAL_PARTS)
    optimizer = GLNetTrainer(model, global_lr=1e-3).optimizer(whole)
    assert {group["lr"] for group in optimizer.param_groups} == {1e-3}
    with pytest.raises(ValueError, match="listening_lr"):
        GLNetTrainer(model, listening_lr=0)
