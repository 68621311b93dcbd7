"""``glmed predict`` with several checkpoints, a run folder's best k, and the box options."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import glmed
from glmed.cli import main
from glmed.inference.provenance import RunRecord
from glmed.io import open_image
from glmed.models.checkpoint import save_checkpoint
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.glnet import GLNet

SIZES = dict(fpn_channels=16, global_size=64, patch_size=64, overlap=8)


@pytest.fixture
def two(tmp_path):
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(GLNet(2, "resnet18", "g2l", **SIZES).eval())
        save_checkpoint(tmp_path / f"m{seed}.pt", models[-1])
    image = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "ISIC_0000001.png")
    return models, [tmp_path / "m1.pt", tmp_path / "m2.pt"], tmp_path / "ISIC_0000001.png"


def read(path):
    with open_image(path) as reader:
        return reader.read((0, 0, *reader.size))[..., 0] // 255


def test_several_checkpoints_predict_as_their_ensemble(tmp_path, two):
    models, checkpoints, image = two
    out = tmp_path / "mask.png"
    assert main(["predict", *map(str, checkpoints), str(image), str(out), "--quiet", "--device", "cpu"]) == 0
    np.testing.assert_array_equal(read(out), glmed.predict(models, image).mask)


def test_a_folder_run_records_every_checkpoint_and_resumes_only_with_the_same_ones(tmp_path, two, capsys):
    _, checkpoints, image = two
    folder, out = tmp_path / "images", tmp_path / "masks"
    folder.mkdir()
    image.rename(folder / image.name)
    command = ["predict", *map(str, checkpoints), str(folder), str(out), "--quiet", "--device", "cpu"]
    assert main(command) == 0
    record = RunRecord.load(out / "ISIC_0000001_segmentation.png")
    assert record is not None and record.checkpoint.count(",") == 1 and "m2.pt" in record.checkpoint_path
    assert main(command) == 0
    assert "kept 1 mask(s)" in capsys.readouterr().out
    assert main(["predict", str(checkpoints[0]), str(folder), str(out), "--quiet", "--device", "cpu"]) == 0
    assert "made by another run" in capsys.readouterr().out


def test_a_run_folder_with_best_k_predicts_with_its_kept_checkpoints(tmp_path, two):
    models, checkpoints, image = two
    run = tmp_path / "run"
    (run / "checkpoints" / "top").mkdir(parents=True)
    for number, path in enumerate(checkpoints, start=1):
        path.rename(run / "checkpoints" / "top" / path.name)
    save_checkpoint(run / "checkpoints" / "best.pt", models[0])
    listed = [{"file": f"top/m{n}.pt", "score": 1.0 - n / 10, "kind": "full", "stage": "local", "epoch": n}
              for n in (1, 2)]
    (run / "checkpoints" / "top.json").write_text(json.dumps({"keep": 2, "checkpoints": listed}))
    out = tmp_path / "mask.png"
    assert main(["predict", str(run), str(image), str(out), "--best", "2", "--quiet", "--device", "cpu"]) == 0
    np.testing.assert_array_equal(read(out), glmed.predict(models, image).mask)
    assert main(["predict", str(run), str(image), str(out), "--quiet", "--device", "cpu"]) == 0  # best.pt
    np.testing.assert_array_equal(read(out), glmed.predict(models[0], image).mask)
    assert main(["predict", str(run), str(image), str(out), "--best", "3", "--quiet", "--device", "cpu"]) == 1


@pytest.mark.parametrize("flags, problem", [(["--best", "2"], "run folder"), (["--grow-boxes", "-1"], "--grow-boxes"),
                                            (["--min-component", "-2"], "--min-component")])
def test_bad_ensemble_and_box_options_are_refused_first(tmp_path, two, capsys, flags, problem):
    _, checkpoints, image = two
    assert main(["predict", str(checkpoints[0]), str(image), str(tmp_path / "m.png"), *flags]) == 1
    assert problem in capsys.readouterr().err


def test_box_options_reach_the_prediction(tmp_path, monkeypatch):
    import glmed.inference.inferer as inferer

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "c2f.pt", CoarseToFineGLNet(2, "resnet18", "g2l", **SIZES))
    Image.fromarray(np.zeros((80, 90, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    calls = []
    real = inferer.predict
    monkeypatch.setattr(inferer, "predict", lambda *args, **kwargs: calls.append(kwargs) or real(*args, **kwargs))
    assert main(["predict", str(tmp_path / "c2f.pt"), str(tmp_path / "image.png"), str(tmp_path / "m.png"),
                 "--grow-boxes", "2", "--min-component", "0.01", "--quiet", "--device", "cpu"]) == 0
    assert calls[0]["grow_boxes"] == 2 and calls[0]["min_component"] == 0.01
