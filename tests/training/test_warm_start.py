"""Stages that add parts to a trained model start them from what it knows (glmed/training/warm_start.py)."""

import numpy as np
import pytest
import torch

import glmed
from glmed.data.synthetic import make_dermoscopy_image
from glmed.models.glnet import GLNet
from glmed.training import warm_start as warm_start_module
from glmed.training.stages import LOCAL_PARTS, Stage, paper_stages
from glmed.training.warm_start import warm_start

SIZES = dict(fpn_channels=16, global_size=64, patch_size=48, overlap=8)


def tiny(sharing, seed=0):
    torch.manual_seed(seed)
    return GLNet(2, "resnet18", sharing, **SIZES).eval()


def test_the_paper_schedule_warm_starts_what_each_stage_adds():
    global_stage, local_stage, both_stage = paper_stages("bidirectional")
    assert global_stage.warm_start == () and local_stage.warm_start == ("aggregate",)
    assert both_stage.warm_start == ("global_partner",)
    assert "warm_start" not in global_stage.to_dict()  # schedules recorded before warm starts still match
    assert local_stage.to_dict()["warm_start"] == ["aggregate"]


@pytest.mark.parametrize("parts", [("decoder",), ("global_partner",)])
def test_a_stage_warm_starts_only_known_parts_it_trains(parts):
    with pytest.raises(ValueError, match="warm_start"):
        Stage("local", LOCAL_PARTS, warm_start=parts)


def test_the_warm_aggregate_answers_what_the_global_head_answers_on_the_cropped_maps():
    model = tiny("g2l")
    torch.nn.init.normal_(model.aggregate.weight)  # far from the global head, as a random start is
    warm_start(model, Stage("local", LOCAL_PARTS, warm_start=("aggregate",)))
    local_final = torch.randn(3, model.aggregate.in_channels // 2, 12, 12)
    global_crop = torch.randn(3, model.global_head.in_channels, 12, 12)
    expected = model.global_head(global_crop)
    for local in (local_final, 10 * local_final):  # the local half is zero: what the local maps hold is ignored
        torch.testing.assert_close(model.aggregated_logits(local, global_crop, (12, 12)), expected)


def test_a_zeroed_listening_part_makes_bidirectional_predict_exactly_as_g2l():
    model = tiny("bidirectional")
    global_image = torch.rand(1, 3, 64, 64)
    context = {point: torch.randn_like(value) for point, value in model.global_features(global_image).items()
               if point in model.config.mode.local_to_global_points}

    def listening_changes_the_maps():
        with torch.no_grad():
            alone, listening = model.global_features(global_image), model.global_features(global_image, context)
        return any(not torch.equal(alone[point], listening[point]) for point in alone)

    assert listening_changes_the_maps()  # the random start the bidirectional stage once began from
    lines = warm_start(model, paper_stages("bidirectional")[2])
    assert lines and "zero" in lines[0]
    assert not listening_changes_the_maps()  # local context adds exactly nothing until the stage trains it
    image = make_dermoscopy_image((150, 190), 3)[0]
    g2l = GLNet(2, "resnet18", "g2l", **SIZES).eval()
    missing, unexpected = g2l.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected and all(".partner_conv." in key for key in unexpected)
    assert np.array_equal(glmed.predict(model, image, thumbnail=False).mask,
                          glmed.predict(g2l, image, thumbnail=False).mask)


def test_parts_a_model_lacks_are_skipped_with_a_line_saying_so():
    model = tiny("g2l")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lines = warm_start(model, Stage("listen", ("global_partner",), warm_start=("global_partner",)))
    assert "no local→global" in lines[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class Stop(Exception):
    pass


def test_a_run_warm_starts_each_stage_once_at_its_first_epoch_and_not_on_resume(tmp_path, monkeypatch):
    from glmed.data.stage_samples import StageSampler
    from glmed.training.runner import StagedRunner
    from glmed.training.trainer import GLNetTrainer

    calls = []
    monkeypatch.setattr("glmed.training.runner.warm_start",
                        lambda model, stage: calls.append(stage.name) or warm_start_module.warm_start(model, stage))
    pairs = [make_dermoscopy_image((120, 150), seed) for seed in range(2)]
    stages = paper_stages("bidirectional", epochs=(1, 2, 1))

    def runner(on_step=None, log=None):
        torch.manual_seed(0)
        model = GLNet(2, "resnet18", "bidirectional", **SIZES)
        return StagedRunner(GLNetTrainer(model), StageSampler(model.config), stages, pairs, None, None,
                            tmp_path / "run", progress=False, log=log or (lambda _: None), on_step=on_step,
                            num_workers=0)

    local_steps = []

    def stop_in_the_second_local_epoch(stage, step, terms):
        if stage.name == "local":
            local_steps.append(step)
            if len(local_steps) == 2:  # one step an epoch: epoch 1 is saved, epoch 2 is under way
                raise Stop

    logged = []
    with pytest.raises(Stop):
        runner(stop_in_the_second_local_epoch, logged.append).run()
    assert calls == ["global", "local"]  # each stage asks once as it begins
    assert sum("warm start" in line for line in logged) == 1  # the global stage starts nothing
    calls.clear()
    runner().run(resume=True)
    assert calls == ["bidirectional"]  # resumed inside the local stage: its trained aggregate is kept
