"""predict_to_tiff: the same mask as glmed.predict, streamed to a pyramidal TIFF.

These run with ``tissue=False`` (every patch segmented); test_slide_tissue.py skips glass.
"""

import os

import numpy as np
import pytest
import torch

import glmed
from glmed.data.synthetic import make_dermoscopy_image
from glmed.inference.slide import predict_to_tiff
from glmed.io import open_image
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.glnet import GLNet

SIZES = dict(fpn_channels=16, global_size=64, patch_size=64, overlap=8)


def read_mask(path):
    with open_image(path) as reader:
        stored, levels = reader.read((0, 0, *reader.size))[..., 0], reader.level_sizes
    assert set(np.unique(stored).tolist()) <= {0, 255}  # a two-class mask as viewers show it
    return stored // 255, levels


@pytest.mark.parametrize("sharing", ["bidirectional", "local_only", "global_only"])
def test_the_tiff_holds_the_mask_predict_gives(tmp_path, slide, sharing):
    torch.manual_seed(0)
    model = GLNet(2, "resnet18", sharing, **SIZES)
    expected = glmed.predict(model, slide, batch_size=3)
    written = predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=3, tile=128)
    mask, level_sizes = read_mask(written.path)
    np.testing.assert_array_equal(mask, expected.mask)
    assert written.size == (300, 420) and written.patches == expected.patches
    assert written.boxes == expected.boxes and written.notes == expected.notes
    assert level_sizes == ((300, 420), (150, 210), (75, 105))  # halved until a 128-pixel tile holds it
    with open_image(written.path) as reader:
        np.testing.assert_array_equal(reader.read((0, 0, 300, 420), level=1)[..., 0], expected.mask[::2, ::2] * 255)
    assert sorted(os.listdir(tmp_path)) == ["mask.tif", slide.name]  # no scratch or temporary file left


def test_coarse_to_fine_refines_boxes_and_leaves_the_rest_background(tmp_path, slide, monkeypatch):
    torch.manual_seed(1)
    model = CoarseToFineGLNet(2, "resnet18", "g2l", **SIZES)

    def centre_is_foreground(global_maps, size):  # a coarse mask with one lesion in the middle
        logits = torch.zeros(1, 2, *size)
        logits[:, 1, size[0] // 3 : size[0] // 2, size[1] // 3 : size[1] // 2] = 5.0
        return logits

    monkeypatch.setattr(model, "global_logits", centre_is_foreground)
    expected = glmed.predict(model, slide)
    written = predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False)
    mask = read_mask(written.path)[0]
    np.testing.assert_array_equal(mask, expected.mask)
    assert written.boxes == expected.boxes and len(written.boxes) == 1
    r0, c0, r1, c1 = written.boxes[0]
    assert (r1 - r0) * (c1 - c0) < 0.5 * mask.size
    outside = np.ones(mask.shape, bool)
    outside[r0:r1, c0:c1] = False
    assert not mask[outside].any()


def test_bad_settings_are_refused_before_any_inference(tmp_path, slide, monkeypatch):
    model = GLNet(2, "resnet18", "local_only", **SIZES)
    monkeypatch.setattr(model, "local_features", lambda *args, **kwargs: pytest.fail("inference ran"))
    with pytest.raises(ValueError, match="lossless"):
        predict_to_tiff(model, slide, tmp_path / "mask.tif", compression="jpeg")
    with pytest.raises(ValueError, match="does not exist"):
        predict_to_tiff(model, slide, tmp_path / "missing" / "mask.tif")
    with pytest.raises(ValueError, match="multiple of 16, got 500"):
        predict_to_tiff(model, slide, tmp_path / "mask.tif", tile=500)
    with pytest.raises(ValueError, match="is a folder"):
        predict_to_tiff(model, slide, tmp_path)


@pytest.mark.parametrize("sharing", ["local_only", "bidirectional"])
def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, slide, monkeypatch, sharing, fail_at_call):
    torch.manual_seed(0)
    model = GLNet(2, "resnet18", sharing, **SIZES)
    uninterrupted = predict_to_tiff(model, slide, tmp_path / "whole.tif", tissue=False, batch_size=3)
    collect_calls = 16 if sharing == "bidirectional" else 0  # 48 patches, batches of 3
    with monkeypatch.context() as patched:
        fail_at_call(model, patched, collect_calls + 9)
        with pytest.raises(RuntimeError, match="device lost"):
            predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=3)
    assert not (tmp_path / "mask.tif").exists()
    assert (tmp_path / ".mask.tif.partial").exists() and (tmp_path / ".mask.tif.partial.json").exists()
    resumed = predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=3)
    np.testing.assert_array_equal(read_mask(resumed.path)[0], read_mask(uninterrupted.path)[0])
    assert 0 < resumed.patches < uninterrupted.patches  # finished rows were not computed again
    note = next(note for note in resumed.notes if "resumed" in note)
    assert 0 < int(note.split(": ")[1].split()[0]) < 300  # the rows written before the failure
    assert sorted(os.listdir(tmp_path)) == sorted(["mask.tif", slide.name, "whole.tif"])


def test_other_weights_or_resume_false_start_afresh(tmp_path, slide, monkeypatch, fail_at_call):
    torch.manual_seed(0)
    model = GLNet(2, "resnet18", "local_only", **SIZES)
    with monkeypatch.context() as patched:
        fail_at_call(model, patched, 9)
        with pytest.raises(RuntimeError):
            predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=3)
    full = predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=3, resume=False)
    assert full.patches == 48 and not any("resumed" in note for note in full.notes)
    with monkeypatch.context() as patched:
        fail_at_call(model, patched, 9)
        with pytest.raises(RuntimeError):
            predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=3)
    with torch.no_grad():
        model.local_head.bias.add_(1.0)
    changed = predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=3)
    assert changed.patches == 48
    np.testing.assert_array_equal(read_mask(changed.path)[0], glmed.predict(model, slide, batch_size=3).mask)


def test_an_array_input_leaves_nothing_behind_on_failure(tmp_path, monkeypatch, fail_at_call):
    model = GLNet(2, "resnet18", "local_only", **SIZES)
    image, _ = make_dermoscopy_image((200, 200), seed=1)
    fail_at_call(model, monkeypatch, 3)
    with pytest.raises(RuntimeError, match="device lost"):
        predict_to_tiff(model, image, tmp_path / "mask.tif", tissue=False, batch_size=3)
    assert os.listdir(tmp_path) == []


def test_coarse_to_fine_resumes_box_by_box(tmp_path, slide, monkeypatch, fail_at_call):
    torch.manual_seed(2)
    model = CoarseToFineGLNet(2, "resnet18", "g2l", per_component=True, **SIZES)

    def two_lesions(global_maps, size):
        logits = torch.zeros(1, 2, *size)
        logits[:, 1, 5:20, 5:20] = 5.0
        logits[:, 1, 40:60, 40:60] = 5.0
        return logits

    monkeypatch.setattr(model, "global_logits", two_lesions)
    uninterrupted = predict_to_tiff(model, slide, tmp_path / "whole.tif", tissue=False, batch_size=2)
    assert len(uninterrupted.boxes) == 2
    with monkeypatch.context() as patched:
        fail_at_call(model, patched, uninterrupted.patches // 2 // 2 + 3)  # inside the second box
        with pytest.raises(RuntimeError):
            predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=2)
    resumed = predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=2)
    np.testing.assert_array_equal(read_mask(resumed.path)[0], read_mask(uninterrupted.path)[0])
    assert resumed.boxes == uninterrupted.boxes and resumed.patches < uninterrupted.patches


def test_a_run_resumes_only_with_the_layout_it_began_with(tmp_path, slide, monkeypatch, fail_at_call):
    torch.manual_seed(0)
    model = GLNet(2, "resnet18", "local_only", **SIZES)
    for resumed_layout in (False, True):  # channels-last changes the mask's last bits
        with monkeypatch.context() as patched:
            fail_at_call(model, patched, 9)
            with pytest.raises(RuntimeError):
                predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=3, channels_last=True)
        result = predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=3,
                                 channels_last=resumed_layout)
        resumed = any("resumed" in note for note in result.notes)
        assert resumed == resumed_layout and (result.patches < 48) == resumed_layout


def _resident_kb(path):
    """Resident kB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps", encoding="utf-8"):
        if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:  # a mapping's header line
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc/self/smaps")
def test_the_scratch_mask_leaves_the_resident_set_without_losing_a_pixel(tmp_path):
    from glmed.inference.slide import ScratchMask

    rows = np.arange(4096).astype(np.uint8)
    with ScratchMask(tmp_path / "mask.tif", (4096, 4096), np.uint8, None) as scratch:
        scratch.mask[:] = rows[:, None]  # 16 MB, dirty, not flushed
        assert _resident_kb(scratch.mask_path) > 8_000
        scratch.release()
        assert _resident_kb(scratch.mask_path) < 1_000
        np.testing.assert_array_equal(scratch.mask[:, 4095], rows)  # mapped again from the page cache
        np.testing.assert_array_equal(np.fromfile(scratch.mask_path, np.uint8).reshape(4096, 4096)[:, 7], rows)
