import pytest
import torch
from conftest import GLOBAL, PATCH, tiny_glnet

from glmed.models.glnet import GLNet, GLNetConfig, Sharing
from glmed.models.sharing import LocalToGlobalCanvas


def local_context(model, batch):
    with torch.no_grad():
        global_maps = model.global_features(batch["global_image"])
        local_maps = model.local_features(batch["patches"], global_maps, batch["boxes"], batch["image_index"])
    canvas = LocalToGlobalCanvas.like(global_maps, model.sharing.local_to_global_points)
    canvas.add(local_maps, batch["boxes"], batch["image_index"])
    return canvas.maps()


@pytest.mark.parametrize("mode", list(Sharing))
def test_every_mode_gives_outputs_of_the_documented_shapes(mode, batch):
    model = tiny_glnet(mode.value, num_classes=3)
    context = local_context(model, batch) if mode is Sharing.BIDIRECTIONAL else None
    with torch.no_grad():
        out = model(**batch, local_context=context)
    n = len(batch["patches"])
    if mode is Sharing.GLOBAL_ONLY:
        assert out.logits_per_image and out.logits.shape == (2, 3, GLOBAL, GLOBAL)
        assert out.local_logits is None and out.local_final is None
    else:
        assert out.logits.shape == (n, 3, PATCH, PATCH) and not out.logits_per_image
        assert out.local_logits.shape == (n, 3, PATCH, PATCH)
    if mode.has_global and mode.has_local:
        assert out.global_logits.shape == (2, 3, GLOBAL, GLOBAL)
        assert out.global_final_crop.shape == out.local_final.shape == (n, 32, PATCH // 4, PATCH // 4)
    assert all(torch.isfinite(t).all() for t in (out.logits,))


@pytest.mark.parametrize("mode, expect_change", [("g2l", True), ("g2l_shallow", True), ("bidirectional", True),
                                                 ("none", False)])
def test_local_output_depends_on_the_global_image_only_when_global_shares(mode, expect_change, batch):
    model = tiny_glnet(mode)
    with torch.no_grad():
        first = model(**batch).local_logits
        changed = dict(batch, global_image=batch["global_image"] + torch.randn_like(batch["global_image"]))
        second = model(**changed).local_logits
    assert (not torch.allclose(first, second)) is expect_change


def test_bidirectional_global_output_changes_when_one_patch_changes(batch):
    model = tiny_glnet("bidirectional")
    with torch.no_grad():
        before = model.global_logits(model.global_features(batch["global_image"], local_context(model, batch)),
                                     (GLOBAL, GLOBAL))
        patches = batch["patches"].clone()
        patches[2] += 3 * torch.randn_like(patches[2])
        changed = dict(batch, patches=patches)
        after = model.global_logits(model.global_features(batch["global_image"], local_context(model, changed)),
                                    (GLOBAL, GLOBAL))
    assert not torch.allclose(before[0], after[0])
    # patch 2 belongs to image 0: image 1's global output is untouched
    assert torch.allclose(before[1], after[1])


def test_g2l_patches_of_different_images_use_their_own_global_maps(batch):
    model = tiny_glnet("g2l")
    with torch.no_grad():
        mixed = model(**batch).local_logits
        n = len(batch["patches"]) // 2
        alone = model(batch["global_image"][1:], batch["patches"][n:], batch["boxes"][n:],
                      torch.zeros(n, dtype=torch.long)).local_logits
    torch.testing.assert_close(mixed[n:], alone, atol=1e-5, rtol=1e-4)


def test_the_model_holds_no_state_between_calls(batch):
    model = tiny_glnet("g2l")
    with torch.no_grad():
        first = model(**batch).logits
        model(**dict(batch, global_image=torch.randn_like(batch["global_image"])))
        again = model(**batch).logits
    torch.testing.assert_close(first, again)


def test_config_round_trip_rebuilds_the_same_architecture():
    model = tiny_glnet("bidirectional")
    rebuilt = GLNet.from_config(model.config.to_dict())
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())


@pytest.mark.parametrize("bad, message", [
    (dict(backbone="resnet101"), "unknown backbone"),
    (dict(sharing="both"), "unknown sharing mode"),
    (dict(num_classes=1), "num_classes"),
    (dict(overlap=600), "overlap"),
    (dict(patch_size=8), "patch_size"),
])
def test_bad_configuration_is_refused_with_the_choices(bad, message):
    with pytest.raises(ValueError, match=message):
        GLNetConfig(**bad)


def test_missing_inputs_are_named(batch):
    with pytest.raises(ValueError, match="needs patches"):
        tiny_glnet("g2l")(batch["global_image"])
    with pytest.raises(ValueError, match="no local branch"):
        tiny_glnet("global_only").local_features(batch["patches"])
