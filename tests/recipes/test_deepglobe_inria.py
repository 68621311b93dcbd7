"""recipes/deepglobe_glnet.py and recipes/inria_glnet.py: the demos end to end on a tiny config."""

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from glmed.data.layouts import read_manifest
from glmed.io.labels import DEEPGLOBE_CLASSES, DEEPGLOBE_PALETTE, mask_to_index
from glmed.io.open import open_image
from glmed.metrics.multiclass import ConfusionMatrix
from glmed.models.checkpoint import load_checkpoint

CASES = {
    # recipe, sharing (a Table 2 row), label kind, prediction file suffix, classes, ignored class
    "deepglobe": ("deepglobe_glnet", "g2l", "deepglobe", "_mask", 7, DEEPGLOBE_CLASSES.index("unknown")),
    "inria": ("inria_glnet", "none", "binary", "", 2, None),
}


def _classes(path, kind):
    with open_image(path) as reader:
        return mask_to_index(reader.read((0, 0) + reader.size), kind, reader.name)


@pytest.mark.parametrize("case", sorted(CASES))
def test_demo_trains_the_chosen_sharing_and_scores_its_predictions(case, load_recipe, tiny_options, tmp_path):
    name, sharing, kind, suffix, classes, ignored = CASES[case]
    out = tmp_path / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = load_recipe(name).main(["--demo", "--out", str(out), "--sharing", sharing, *tiny_options])
    assert code == 0, stdout.getvalue()
    assert "test (1 images): miou" in stdout.getvalue()

    best = load_checkpoint(out / "checkpoints" / "best.pt")
    config = json.loads(best["model_config"])
    assert best["model_class"] == "GLNet" and config["sharing"] == sharing and config["num_classes"] == classes
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["stage"].tolist() == ["global", "local"]
    # the global stage is validated on the global branch's own masks, the local stage on the whole pipeline
    assert metrics["val_coarse_miou"][0] >= 0 and metrics["val_miou"].isna().tolist() == [True, False]
    assert 0 <= metrics["val_miou"][1] <= 1

    manifest = read_manifest(out / "manifest.csv")
    test = manifest[manifest["split"] == "test"].iloc[0]
    prediction_path = out / "predictions" / f"{test.image_id}{suffix}.png"
    assert [p.name for p in (out / "predictions").iterdir()] == [prediction_path.name]
    with Image.open(prediction_path) as prediction, Image.open(test.image_path) as image:
        assert prediction.size == image.size
        pixels = np.asarray(prediction)
    if kind == "deepglobe":
        colours = {tuple(c) for c in np.unique(pixels.reshape(-1, 3), axis=0)}
        assert pixels.ndim == 3 and colours <= {tuple(c) for c in DEEPGLOBE_PALETTE}
    else:
        assert pixels.ndim == 2 and set(np.unique(pixels).tolist()) <= {0, 255}

    # The scores are those of the files on disk, recomputed here independently.
    matrix = ConfusionMatrix(classes, ignore_index=ignored)
    matrix.update(_classes(test.label_path, kind), _classes(prediction_path, kind))
    scores = pd.read_csv(out / "scores.csv", index_col="image_id", dtype={"image_id": str})
    assert scores.loc[test.image_id, "miou"] == pytest.approx(matrix.mean_iou(), abs=1e-12)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["miou"] == pytest.approx(matrix.mean_iou(), abs=1e-12)
    assert summary["test"]["images"] == 1


def test_an_unknown_sharing_mode_is_refused(load_recipe, tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_recipe("deepglobe_glnet").main(["--demo", "--out", str(tmp_path / "run"), "--sharing", "both"])
    assert "invalid choice: 'both'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
