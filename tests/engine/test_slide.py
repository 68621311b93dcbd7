"""predict_to_tiff: the same mask as glmed.predict, streamed to a pyramidal TIFF."""

import os

import numpy as np
import pytest
import torch

import glmed
from glmed.data.synthetic import make_dermoscopy_image
from glmed.engine.slide import predict_to_tiff
from glmed.io import open_image
from glmed.io.writers import write_pyramidal_tiff
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.glnet import GLNet

SIZES = dict(fpn_channels=16, global_size=64, patch_size=64, overlap=8)


@pytest.fixture
def slide(tmp_path):
    """A two-level tiled TIFF of a generated lesion image, 300×420."""
    image, _ = make_dermoscopy_image((300, 420), seed=4)
    path = tmp_path / "slide.tif"
    write_pyramidal_tiff(path, image, levels=2, tile=64, compression="zlib")
    return path


def read_mask(path):
    with open_image(path) as reader:
        return reader.read((0, 0, *reader.size))[..., 0], reader.level_sizes


@pytest.mark.parametrize("sharing", ["bidirectional", "local_only", "global_only"])
def test_the_tiff_holds_the_mask_predict_gives(tmp_path, slide, sharing):
    torch.manual_seed(0)
    model = GLNet(2, "resnet18", sharing, **SIZES)
    expected = glmed.predict(model, slide, batch_size=3)
    written = predict_to_tiff(model, slide, tmp_path / "mask.tif", batch_size=3, tile=128)
    mask, level_sizes = read_mask(written.path)
    np.testing.assert_array_equal(mask, expected.mask)
    assert written.size == (300, 420) and written.patches == expected.patches
    assert written.boxes == expected.boxes and written.notes == expected.notes
    assert level_sizes == ((300, 420), (150, 210), (75, 105))  # halved until a 128-pixel tile holds it
    with open_image(written.path) as reader:
        np.testing.assert_array_equal(reader.read((0, 0, 300, 420), level=1)[..., 0], expected.mask[::2, ::2])
    assert sorted(os.listdir(tmp_path)) == ["mask.tif", "slide.tif"]  # no scratch or temporary file left


def test_coarse_to_fine_refines_boxes_and_leaves_the_rest_background(tmp_path, slide, monkeypatch):
    torch.manual_seed(1)
    model = CoarseToFineGLNet(2, "resnet18", "g2l", **SIZES)

    def centre_is_foreground(global_maps, size):  # a coarse mask with one lesion in the middle
        logits = torch.zeros(1, 2, *size)
        logits[:, 1, size[0] // 3 : size[0] // 2, size[1] // 3 : size[1] // 2] = 5.0
        return logits

    monkeypatch.setattr(model, "global_logits", centre_is_foreground)
    expected = glmed.predict(model, slide)
    written = predict_to_tiff(model, slide, tmp_path / "mask.tif")
    mask = read_mask(written.path)[0]
    np.testing.assert_array_equal(mask, expected.mask)
    assert written.boxes == expected.boxes and len(written.boxes) == 1
    r0, c0, r1, c1 = written.boxes[0]
    assert (r1 - r0) * (c1 - c0) < 0.5 * mask.size
    outside = np.ones(mask.shape, bool)
    outside[r0:r1, c0:c1] = False
    assert not mask[outside].any()


def test_lossy_compression_and_missing_folders_are_refused(tmp_path, slide):
    model = GLNet(2, "resnet18", "local_only", **SIZES)
    with pytest.raises(ValueError, match="lossless"):
        predict_to_tiff(model, slide, tmp_path / "mask.tif", compression="jpeg")
    with pytest.raises(ValueError, match="does not exist"):
        predict_to_tiff(model, slide, tmp_path / "missing" / "mask.tif")


def test_a_failure_midway_leaves_no_file_behind(tmp_path, slide, monkeypatch):
    model = GLNet(2, "resnet18", "local_only", **SIZES)
    calls = []

    def failing_local_features(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return GLNet.local_features(model, *args, **kwargs)

    monkeypatch.setattr(model, "local_features", failing_local_features)
    with pytest.raises(RuntimeError, match="device lost"):
        predict_to_tiff(model, slide, tmp_path / "mask.tif")
    assert sorted(os.listdir(tmp_path)) == ["slide.tif"]
