"""``glmed predict``: a checkpoint and an image in, a mask file out, clear errors otherwise."""

import numpy as np
import pytest
import torch
from PIL import Image

import glmed
from glmed.cli import main
from glmed.engine.checkpoint import save_checkpoint
from glmed.io import open_image
from glmed.models.glnet import GLNet

SIZES = dict(fpn_channels=16, global_size=64, patch_size=64, overlap=8)


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    model = GLNet(2, "resnet18", "g2l", **SIZES)
    save_checkpoint(tmp_path / "best.pt", model)
    image = np.random.default_rng(0).integers(0, 256, (130, 170, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "ISIC_0000001.png")
    return model.eval(), tmp_path / "best.pt", tmp_path / "ISIC_0000001.png"


@pytest.mark.parametrize("name", ["mask.png", "mask.tif"])
def test_predict_writes_the_mask_predict_gives(tmp_path, trained, capsys, name):
    model, checkpoint, image = trained
    out = tmp_path / name
    assert main(["predict", str(checkpoint), str(image), str(out), "--quiet", "--device", "cpu"]) == 0
    expected = glmed.predict(model, image).mask
    with open_image(out) as reader:
        written = reader.read((0, 0, *reader.size))[..., 0]
    np.testing.assert_array_equal(written, expected * (255 if name.endswith(".png") else 1))
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("missing checkpoint", "checkpoint not found"),
    ("bad image", "ISIC_0000001.png"),
    ("bad suffix", "must end in .tif, .tiff or .png"),
    ("missing folder", "does not exist"),
])
def test_bad_inputs_end_with_a_message_and_status_1(tmp_path, trained, capsys, case, message):
    _, checkpoint, image = trained
    out = tmp_path / "mask.tif"
    if case == "missing checkpoint":
        checkpoint = tmp_path / "nope.pt"
    elif case == "bad image":
        image.write_bytes(b"not an image")
    elif case == "bad suffix":
        out = tmp_path / "mask.jpg"
    else:
        out = tmp_path / "missing" / "mask.tif"
    assert main(["predict", str(checkpoint), str(image), str(out), "--quiet", "--device", "cpu"]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()
