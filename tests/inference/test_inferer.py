import numpy as np
import pytest
import torch
import torch.nn.functional as F

import glmed
from glmed.data.normalize import to_model_input
from glmed.geometry import patch_grid
from glmed.inference.merging import upsample_to_labels
from glmed.models.glnet import GLNet, Sharing


def tiny(sharing, patch=64, overlap=8, global_size=64):
    return GLNet(2, "resnet18", sharing, fpn_channels=16, global_size=global_size, patch_size=patch,
                 overlap=overlap).eval()


def image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", list(Sharing))
def test_predict_gives_a_full_size_mask_in_every_mode(mode):
    result = glmed.predict(tiny(mode.value), image(150, 100), batch_size=3)
    assert result.mask.shape == (150, 100) and result.mask.dtype == np.uint8
    assert set(np.unique(result.mask)) <= {0, 1}
    assert result.boxes == []
    assert result.patches == (0 if mode is Sharing.GLOBAL_ONLY else 6)
    assert (result.coarse is None) == (mode is Sharing.LOCAL_ONLY)


@pytest.mark.parametrize("mode", list(Sharing))
def test_a_bfloat16_model_gets_inputs_in_its_own_type(mode):
    torch.manual_seed(0)
    model = tiny(mode.value)
    full_precision = glmed.predict(model, image(150, 100)).mask
    half_precision = glmed.predict(model.to(torch.bfloat16), image(150, 100)).mask
    assert next(model.parameters()).dtype == torch.bfloat16
    assert half_precision.shape == (150, 100)
    assert (half_precision == full_precision).mean() > 0.95  # same network, rounded weights


def test_an_image_of_one_patch_gives_the_networks_own_answer():
    model = tiny("g2l", patch=64, global_size=64)
    pixels = image(64, 64)
    result = glmed.predict(model, pixels)
    x = to_model_input(pixels)[None]
    with torch.no_grad():
        out = model(x, x, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0]))
    np.testing.assert_array_equal(result.mask, out.logits[0].argmax(0).numpy())
    np.testing.assert_array_equal(result.coarse, out.global_logits[0].argmax(0).numpy())


def test_patches_are_stitched_back_at_their_own_places():
    model = tiny("local_only", patch=32, overlap=0)
    pixels = image(64, 96)
    result = glmed.predict(model, pixels, batch_size=4)
    for r0 in (0, 32):
        for c0 in (0, 32, 64):
            x = to_model_input(pixels[r0:r0 + 32, c0:c0 + 32])[None]
            with torch.no_grad():
                expected = model(x[:, :, :1, :1].expand(1, 3, 64, 64), x).logits[0].argmax(0).numpy()
            np.testing.assert_array_equal(result.mask[r0:r0 + 32, c0:c0 + 32], expected)


def test_constant_outputs_stitch_to_the_same_constant_everywhere():
    model = tiny("g2l", patch=48, overlap=20)
    with torch.no_grad():
        model.aggregate.weight.zero_()
        model.aggregate.bias.copy_(torch.tensor([-1.0, 1.0]))
    result = glmed.predict(model, image(130, 170), batch_size=5)
    assert result.patches == len(patch_grid((130, 170), 48, 20)) > 1
    assert (result.mask == 1).all()


def test_predict_leaves_the_model_in_its_training_mode():
    model = tiny("g2l").train()
    glmed.predict(model, image(70, 70))
    assert model.training


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(TypeError, match="expected an image array"):
        glmed.predict(tiny("g2l"), [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="batch_size"):
        glmed.predict(tiny("g2l"), image(64, 64), batch_size=0)


@pytest.mark.parametrize("size, chunk", [((37, 53), 5), ((200, 120), 512), ((9, 9), 1)])
def test_banded_upsampling_equals_whole_interpolation(size, chunk):
    logits = torch.randn(3, 8, 6)
    expected = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    np.testing.assert_array_equal(upsample_to_labels(logits, size, rows_per_chunk=chunk), expected)


def test_predict_reads_an_image_file_and_names_a_bad_one(tmp_path):
    from PIL import Image

    pixels = image(120, 90)
    path = tmp_path / "ISIC_0000001.png"
    Image.fromarray(pixels).save(path)
    model = tiny("g2l")
    np.testing.assert_array_equal(glmed.predict(model, path).mask, glmed.predict(model, pixels).mask)
    broken = tmp_path / "ISIC_0000002.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="ISIC_0000002.jpg"):
        glmed.predict(model, broken)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        glmed.predict(model, tmp_path / "missing.png")


def test_predict_restores_each_modules_own_mode():
    model = tiny("g2l").train()
    model.global_branch.eval()  # as a trainer freezes it in the local stage
    glmed.predict(model, image(70, 70))
    assert model.training and model.local_branch.training and not model.global_branch.training


def test_many_overlapping_patches_do_not_overflow_the_stitching_counts():
    model = tiny("local_only", patch=32, overlap=31)
    with torch.no_grad():
        model.local_head.weight.zero_()
        model.local_head.bias.copy_(torch.tensor([-1.0, 1.0]))
    result = glmed.predict(model, image(64, 64), batch_size=64)
    assert result.patches == 33 * 33 and (result.mask == 1).all()


@pytest.mark.parametrize("mode", ["global_only", "g2l"])
def test_predict_writes_into_a_given_array_and_can_skip_the_coarse_mask(tmp_path, mode):
    model = tiny(mode)
    expected = glmed.predict(model, image(150, 100)).mask
    out = np.memmap(tmp_path / "mask.raw", dtype=np.uint8, mode="w+", shape=(150, 100))
    out[:] = 9
    result = glmed.predict(model, image(150, 100), out=out, with_coarse=False)
    assert result.mask is out and result.coarse is None
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match=r"out has shape \(100, 150\)"):
        glmed.predict(model, image(150, 100), out=np.zeros((100, 150), np.uint8))
    many = GLNet(300, "resnet18", mode, fpn_channels=16, global_size=64, patch_size=64, overlap=8)
    with pytest.raises(ValueError, match="cannot hold 300 class indices; use int32"):
        glmed.predict(many, image(150, 100), out=np.zeros((150, 100), np.uint8))


def test_predict_leaves_the_model_on_the_device_and_in_the_mode_it_found(monkeypatch):
    import glmed.inference.inferer as inferer

    model = glmed.GLNet(2, "resnet18", "g2l", fpn_channels=16, global_size=64, patch_size=48, overlap=8).train()
    # The machine has one device; say the model's home is another one ("meta") and check it goes back there.
    monkeypatch.setattr(inferer, "model_device", lambda module: torch.device("meta"))
    glmed.predict(model, np.zeros((100, 120, 3), dtype=np.uint8), device="cpu")
    assert {parameter.device.type for parameter in model.parameters()} == {"meta"}
    assert model.training


def _sure_model(foreground: bool):
    model = glmed.GLNet(2, "resnet18", "g2l", fpn_channels=16, global_size=64, patch_size=48, overlap=8)
    with torch.no_grad():
        model.aggregate.weight.zero_()
        model.aggregate.bias.copy_(torch.tensor([-5.0, 5.0] if foreground else [5.0, -5.0]))
    return model


def test_a_mask_that_is_nearly_all_foreground_gets_a_note():
    image = np.random.default_rng(0).integers(0, 255, (100, 120, 3), dtype=np.uint8)
    everything = glmed.predict(_sure_model(True), image)
    assert (everything.mask == 1).all() and any("100.0% of the image" in note for note in everything.notes)
    assert not any("% of the image" in note for note in glmed.predict(_sure_model(False), image).notes)


def test_an_image_far_from_the_training_size_gets_a_note():
    from dataclasses import replace

    model = _sure_model(False)
    image = np.zeros((100, 120, 3), dtype=np.uint8)
    assert glmed.predict(model, image).notes == []  # no training size recorded: nothing to compare
    model.config = replace(model.config, trained_image_size=(1000, 1500))
    (note,) = glmed.predict(model, image).notes
    assert "100×120" in note and "1000×1500" in note


def test_training_records_the_median_image_size(tmp_path):
    model = glmed.GLNet(2, "resnet18", "g2l", fpn_channels=8, global_size=64, patch_size=32, overlap=4)
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), np.zeros((h, w), np.uint8))
             for h, w in ((60, 80), (70, 90), (90, 100))]
    glmed.fit(model, pairs, stages=glmed.paper_stages("g2l", epochs=(1, 0)), images_per_step=3, progress=False,
              log=None)
    assert model.config.trained_image_size == (70, 90)
    again = glmed.load_model(glmed.save_model(model, tmp_path / "m.pt"))
    assert again.config.trained_image_size == (70, 90)


def test_an_in_memory_prediction_keeps_a_thumbnail():
    result = glmed.predict(_sure_model(False), np.zeros((600, 300, 3), dtype=np.uint8))
    assert result.thumbnail is not None and result.thumbnail.shape == (256, 128, 3)


def test_cover_notes_are_for_two_class_models_only():
    """In DeepGlobe class 0 is a land class like the others: a mask of other classes is normal there."""
    model = glmed.GLNet(7, "resnet18", "g2l", fpn_channels=16, global_size=64, patch_size=48, overlap=8)
    with torch.no_grad():
        model.aggregate.weight.zero_()
        model.aggregate.bias.copy_(torch.tensor([-5.0, 5.0, 0, 0, 0, 0, 0]))
    result = glmed.predict(model, np.zeros((100, 120, 3), dtype=np.uint8))
    assert (result.mask == 1).all() and not any("% of the image" in note for note in result.notes)


def test_fit_hands_the_model_back_whole():
    model = glmed.GLNet(2, "resnet18", "g2l", fpn_channels=8, global_size=64, patch_size=32, overlap=4)
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    glmed.fit(model, [(image, np.zeros((64, 80), np.uint8))] * 2, stages=glmed.paper_stages("g2l", epochs=(1, 1)),
              progress=False, log=None)
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert all(module.training for module in model.modules())


@pytest.mark.parametrize("model_class", ["GLNet", "CoarseToFineGLNet"])
def test_global_only_gives_the_global_branchs_own_mask_without_reading_patches(model_class):
    torch.manual_seed(0)
    model = getattr(glmed, model_class)(2, "resnet18", "g2l", fpn_channels=16, global_size=64, patch_size=64,
                                        overlap=8)
    image = np.random.default_rng(0).integers(0, 255, (150, 170, 3), dtype=np.uint8)
    full = glmed.predict(model, image)
    alone = glmed.predict(model, image, global_only=True)
    np.testing.assert_array_equal(alone.mask, full.coarse)
    assert alone.patches == 0 and alone.coarse is None and full.patches > 0
    with pytest.raises(ValueError, match="global_only needs a global branch"):
        glmed.predict(tiny("local_only"), image, global_only=True)
