"""``glmed predict``: a checkpoint and an image in, a mask file out, clear errors otherwise."""

import numpy as np
import pytest
import torch
from PIL import Image

import glmed
from glmed.cli import main
from glmed.io import open_image
from glmed.models.checkpoint import save_checkpoint
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


def test_a_folder_becomes_a_scorable_isic_submission_and_resumes(tmp_path, trained, capsys):
    model, checkpoint, _ = trained
    images, truth = tmp_path / "images", tmp_path / "truth"
    images.mkdir(), truth.mkdir()
    for index in range(3):
        pixels = np.random.default_rng(index).integers(0, 256, (90, 120, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"ISIC_{index:07d}.jpg")
        Image.fromarray(np.full((90, 120), 255, np.uint8)).save(truth / f"ISIC_{index:07d}_segmentation.png")
    (images / "LICENSE.txt").write_text("CC-0")
    submission = tmp_path / "submission"
    assert main(["predict", str(checkpoint), str(images), str(submission), "--quiet", "--device", "cpu"]) == 0
    assert sorted(p.name for p in submission.iterdir()) == [f"ISIC_{i:07d}_segmentation.png" for i in range(3)]
    expected = glmed.predict(model, images / "ISIC_0000001.jpg").mask * 255
    np.testing.assert_array_equal(np.asarray(Image.open(submission / "ISIC_0000001_segmentation.png")), expected)
    assert len(glmed.score_submission(truth, submission)) == 3

    (submission / "ISIC_0000002_segmentation.png").unlink()
    capsys.readouterr()
    assert main(["predict", str(checkpoint), str(images), str(submission), "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "kept 2 mask(s)" in printed and printed.count("wrote ") == 1 and "ISIC_0000002" in printed


def test_a_folder_run_reports_bad_images_and_finishes_the_others(tmp_path, trained, capsys):
    _, checkpoint, _ = trained
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((70, 70, 3), np.uint8)).save(images / "a.png")
    (images / "b.png").write_bytes(b"truncated")
    out = tmp_path / "masks"
    assert (
        main(["predict", str(checkpoint), str(images), str(out), "--quiet", "--device", "cpu", "--format", "tif"])
        == 1
    )
    error = capsys.readouterr().err
    assert "1 of 2 image(s) failed" in error and "b.png" in error
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.tif"]
