"""A branch pass that stops once the maps its caller reads exist (``points=``), bit for bit as a full pass.

Bidirectional sharing's collect pass reads the twelve shared maps only, so it skips the refining
convolutions and the final map; everything it stitches, and so every prediction, must stay the same.
"""

import numpy as np
import pytest
import torch
from conftest import tiny_glnet

import glmed
from glmed.inference import merging
from glmed.models.fpn import ALL_POINTS, ENCODER_POINTS, FINAL, SHARED_POINTS, TOPDOWN_POINTS, FPNBranch, map_channels
from glmed.models.sharing import LocalToGlobalCanvas, collect_local_context


def branch_with_partner():
    """A ResNet18 branch listening at every shared point, and a partner that records what it is asked for."""
    channels = map_channels("resnet18", 8)
    branch = FPNBranch("resnet18", 8, {p: channels[p] for p in SHARED_POINTS}).eval()
    generator = torch.Generator().manual_seed(1)
    partner_maps: dict[str, torch.Tensor] = {}
    asked: list[str] = []

    def partner(point, size, conv):
        asked.append(point)
        if point not in partner_maps:  # one fixed map per point, whichever pass asks first
            partner_maps[point] = torch.randn(2, channels[point], *size, generator=generator)
        return conv(partner_maps[point])

    return branch, partner, asked


def refine_calls(branch):
    """How many times the branch's refining convolutions ran, counted by forward hooks."""
    calls = []
    for conv in branch.refine:
        conv.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("points", [
    SHARED_POINTS, ("c3",), ("p4",), ("p2",), ("s3", "p5"), ("s5",), (FINAL,), ("s2", FINAL), (),
])
def test_every_map_asked_for_is_the_full_pass_map_bit_for_bit(points):
    branch, partner, _ = branch_with_partner()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = branch(image, partner)
        partial = branch(image, partner, points)
    assert set(full) == set(ALL_POINTS)
    assert set(points) <= set(partial) <= set(full)
    for name, value in partial.items():
        assert torch.equal(value, full[name]), name


def test_the_shared_points_skip_the_refining_convolutions_their_partner_maps_and_the_final_map():
    branch, partner, asked = branch_with_partner()
    calls = refine_calls(branch)
    with torch.no_grad():
        maps = branch(torch.randn(2, 3, 64, 64), partner, SHARED_POINTS)
    assert set(maps) == set(SHARED_POINTS) and FINAL not in maps
    assert calls == []
    assert sorted(asked) == sorted(ENCODER_POINTS + TOPDOWN_POINTS)  # the s maps feed the refining convs only
    with torch.no_grad():
        branch(torch.randn(2, 3, 64, 64), partner)
    assert len(calls) == 4  # and a full pass still runs all four


def test_a_top_down_map_needs_only_the_levels_above_it():
    branch, partner, asked = branch_with_partner()
    with torch.no_grad():
        maps = branch(torch.randn(2, 3, 64, 64), partner, ("p4",))
    assert set(maps) == set(ENCODER_POINTS) | {"p5", "p4"}
    assert asked == ["c5", "c4"]


def test_unknown_points_are_refused_with_the_choices():
    branch, _, _ = branch_with_partner()
    with pytest.raises(ValueError, match=r"unknown branch maps \['q2'\]; choose from"):
        branch(torch.randn(1, 3, 32, 32), None, ("c2", "q2"))


def full_collect(model, global_maps, batches):
    """The collect pass as it was: every patch's full local pass, stitched."""
    canvas = LocalToGlobalCanvas.like(global_maps, model.sharing.local_to_global_points)
    for patches, boxes, image_index in batches:
        canvas.add(model.local_features(patches, global_maps, boxes, image_index), boxes, image_index)
    return canvas.maps()


def test_the_collect_pass_stitches_the_same_maps_bit_for_bit_without_refining(batch):
    model = tiny_glnet("bidirectional")
    calls = refine_calls(model.local_branch)
    patches, boxes, index = batch["patches"], batch["boxes"], batch["image_index"]
    batches = [(patches[i:i + 3], boxes[i:i + 3], index[i:i + 3]) for i in range(0, len(patches), 3)]
    with torch.no_grad():
        global_maps = model.global_features(batch["global_image"])
        before = full_collect(model, global_maps, batches)
        calls.clear()
        after = collect_local_context(model, global_maps, batches)
    assert calls == []
    assert set(after) == set(before) == set(SHARED_POINTS)
    for name in SHARED_POINTS:
        assert torch.equal(after[name], before[name]), name


def test_predict_on_a_bidirectional_model_is_bit_identical_to_a_full_collect_pass(monkeypatch):
    torch.manual_seed(0)
    model = glmed.GLNet(2, "resnet18", "bidirectional", fpn_channels=16, global_size=64, patch_size=64,
                        overlap=8).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (150, 170, 3), dtype=np.uint8)
    seen: list[tuple[torch.Tensor, tuple[int, ...]]] = []
    add = merging.RowBandMerger.add

    def recording(self, probabilities, box):
        seen.append((probabilities.clone(), tuple(box)))
        return add(self, probabilities, box)

    monkeypatch.setattr(merging.RowBandMerger, "add", recording)
    asked: list[object] = []
    local_features = type(model).local_features

    def spying(*args, points=None, **kwargs):
        asked.append(points)
        return local_features(model, *args, points=points, **kwargs)

    monkeypatch.setattr(model, "local_features", spying)
    partial = glmed.predict(model, pixels, batch_size=3)
    partial_seen, seen[:] = list(seen), []
    assert tuple(SHARED_POINTS) in asked and None in asked  # the collect pass asked for less, the final pass not
    monkeypatch.setattr(model, "local_features", lambda *args, points=None, **kwargs: local_features(
        model, *args, **kwargs))  # forced full computation, as before
    full = glmed.predict(model, pixels, batch_size=3)
    assert len(partial_seen) == len(seen) == partial.patches == full.patches > 1
    for (p, box_p), (f, box_f) in zip(partial_seen, seen, strict=True):
        assert box_p == box_f and torch.equal(p, f)
    assert np.array_equal(partial.mask, full.mask)
    assert np.array_equal(partial.coarse, full.coarse)
