"""predict_to_tiff(probabilities=...): a uint8 pyramid of how sure the mask is, streamed and resumed with it."""

import json

import numpy as np
import pytest
import tifffile
import torch

from glmed.data.synthetic.slides import write_synthetic_slide
from glmed.inference.merging import confidence_bytes
from glmed.inference.slide import predict_to_tiff
from glmed.io import open_image
from glmed.io.mask_tiff import PROBABILITIES_KEY
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.glnet import GLNet

SIZES = dict(fpn_channels=16, global_size=64, patch_size=64, overlap=8)


@pytest.fixture
def slide(tmp_path):
    return write_synthetic_slide(tmp_path / "slide.tif", (160, 200), seed=5, kind="tiff", tile=64, mpp=0.25).path


def read_level0(path):
    with open_image(path) as reader:
        return reader.read((0, 0, *reader.size))[..., 0]


def test_confidence_bytes_are_the_foregrounds_or_the_winners_probability():
    two = torch.tensor([[[0.75, 0.0]], [[0.25, 1.0]]])
    assert confidence_bytes(two).tolist() == [[64, 255]]
    three = torch.tensor([[[0.5, 0.2]], [[0.3, 0.2]], [[0.2, 0.6]]])
    assert confidence_bytes(three).tolist() == [[128, 153]]


@pytest.mark.parametrize("sharing", ["g2l", "global_only"])
def test_two_classes_give_the_foregrounds_probability_agreeing_with_the_mask(tmp_path, slide, sharing):
    torch.manual_seed(0)
    model = GLNet(2, "resnet18", sharing, **SIZES)
    plain = predict_to_tiff(model, slide, tmp_path / "plain.tif", tissue=False, mpp=0.5)
    written = predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, mpp=0.5, tile=64,
                              probabilities=tmp_path / "sure.tif")
    mask, sure = read_level0(written.path) // 255, read_level0(written.probabilities)
    assert sure.shape == mask.shape == (80, 100) and sure.dtype == np.uint8
    clear = sure != 128  # a tie at exactly one half could round either way
    np.testing.assert_array_equal(mask[clear], (sure[clear] > 128).astype(mask.dtype))
    assert len(np.unique(sure)) > 2  # probabilities, not a second mask
    # asking for probabilities leaves the mask as it was
    np.testing.assert_array_equal(read_level0(plain.path), read_level0(written.path))
    with tifffile.TiffFile(written.probabilities) as tiff:
        metadata = json.loads(tiff.pages.first.description)[PROBABILITIES_KEY]
        assert len(tiff.pages) > 1  # a pyramid
    assert metadata["of"] == "foreground" and metadata["level0_size"] == [80, 100]
    assert metadata["slide_size"] == [160, 200] and metadata["mpp"] == pytest.approx([0.5, 0.5])


def test_more_classes_give_the_winning_classs_probability(tmp_path, slide):
    torch.manual_seed(1)
    written = predict_to_tiff(GLNet(3, "resnet18", "g2l", **SIZES), slide, tmp_path / "mask.tif", tissue=False,
                              probabilities=tmp_path / "sure.tif")
    assert read_level0(written.probabilities).min() >= 85  # a winner of three has at least a third


def test_outside_coarse_to_fines_boxes_the_background_is_sure(tmp_path, slide, monkeypatch):
    torch.manual_seed(1)
    model = CoarseToFineGLNet(2, "resnet18", "g2l", **SIZES)

    def centre_is_foreground(global_maps, size):
        logits = torch.zeros(1, 2, *size)
        logits[:, 1, size[0] // 3 : size[0] // 2, size[1] // 3 : size[1] // 2] = 5.0
        return logits

    monkeypatch.setattr(model, "global_logits", centre_is_foreground)
    written = predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, probabilities=tmp_path / "p.tif")
    sure = read_level0(written.probabilities)
    (r0, c0, r1, c1), = written.boxes
    outside = np.ones(sure.shape, bool)
    outside[r0:r1, c0:c1] = False
    assert not sure[outside].any() and sure[~outside].any()


def test_an_interrupted_run_resumes_its_probabilities_too(tmp_path, slide, monkeypatch, fail_at_call):
    """Patches of 64 with 8 overlap: 3 rows of 4 on the 160x200 slide, 2 batches of 2 per row."""
    torch.manual_seed(0)
    model = GLNet(2, "resnet18", "g2l", **SIZES)
    whole = predict_to_tiff(model, slide, tmp_path / "whole.tif", tissue=False, batch_size=2,
                            probabilities=tmp_path / "whole_p.tif")
    with monkeypatch.context() as patched:
        fail_at_call(model, patched, 6)  # in the third row of patches: two rows are written
        with pytest.raises(RuntimeError, match="device lost"):
            predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=2,
                            probabilities=tmp_path / "p.tif")
    assert (tmp_path / ".mask.tif.partial.probabilities").exists()
    resumed = predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=2,
                              probabilities=tmp_path / "p.tif")
    assert any("resumed an interrupted run" in note for note in resumed.notes)
    np.testing.assert_array_equal(read_level0(resumed.probabilities), read_level0(whole.probabilities))
    np.testing.assert_array_equal(read_level0(resumed.path), read_level0(whole.path))
    assert not list(tmp_path.glob(".*partial*"))


def test_bad_probability_names_are_refused_before_any_inference(tmp_path, slide):
    model = GLNet(2, "resnet18", "g2l", **SIZES)
    with pytest.raises(ValueError, match="probability pyramid must be named .tif or .tiff"):
        predict_to_tiff(model, slide, tmp_path / "mask.tif", probabilities=tmp_path / "p.png")
    with pytest.raises(ValueError, match="needs a name of its own"):
        predict_to_tiff(model, slide, tmp_path / "mask.tif", probabilities=tmp_path / "mask.tif")
