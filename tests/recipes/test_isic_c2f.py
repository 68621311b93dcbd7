"""recipes/isic_c2f.py: the demo end to end on a tiny config, its outputs, and its refusals of bad input."""

import contextlib
import io
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from glmed.cli import main as glmed_main
from glmed.data.layouts import read_manifest
from glmed.experiments.config import ConfigError
from glmed.inference.finishing import finish_lesion_mask
from glmed.models.checkpoint import load_checkpoint
from glmed.models.resnet import ResNetEncoder


@pytest.fixture(scope="module")
def isic(load_recipe):
    return load_recipe("isic_c2f")


@pytest.fixture(scope="module")
def demo_run(isic, tiny_options, tmp_path_factory):
    """One tiny demo run shared by the tests that read its outputs; returns (run dir, stdout)."""
    out = tmp_path_factory.mktemp("isic") / "run"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = isic.main(["--demo", "--out", str(out), "--seed", "1", *tiny_options])
    assert code == 0, buffer.getvalue()
    return out, buffer.getvalue()


def test_demo_writes_every_output(demo_run):
    out, stdout = demo_run
    config = json.loads((out / "config.json").read_text())
    assert config["demo"] and config["backbone"] == "resnet18"  # the demo's small network ...
    assert config["fpn_channels"] == 8 and config["epochs"] == [1, 1, 1] and config["seed"] == 1  # ... overridden
    assert config["gamma"] == 6.0 and config["fmreg_weight"] == 0.15  # the paper's loss is kept

    manifest = read_manifest(out / "manifest.csv")
    assert manifest["split"].value_counts().to_dict() == {"train": 3, "val": 1, "test": 1}

    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["stage"].tolist() == ["global", "local", "bidirectional"]
    assert {"loss", "val_threshold_jaccard", "val_jaccard", "val_coarse_threshold_jaccard"} <= set(metrics.columns)
    assert metrics["epoch"].tolist() == [1, 2, 3]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best, last = (load_checkpoint(out / "checkpoints" / name) for name in ("best.pt", "last.pt"))
    assert best["model_class"] == "CoarseToFineGLNet" and json.loads(best["model_config"])["sharing"] == "bidirectional"
    assert last["position"] == {"stage_index": 2, "stage": "bidirectional", "epoch": 1}
    assert best["best"]["score"] == metrics["val_threshold_jaccard"].max()
    assert len(last["history"]) == 3

    test = manifest[manifest["split"] == "test"].iloc[0]
    assert [p.name for p in (out / "submission").iterdir()] == [f"{test.image_id}_segmentation.png"]
    with Image.open(out / "submission" / f"{test.image_id}_segmentation.png") as mask, \
            Image.open(test.image_path) as image:
        assert mask.mode == "L" and mask.size == image.size
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}

    assert "test (1 images): threshold_jaccard" in stdout
    assert "s per image, peak memory" in stdout and "VmHWM" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inference"]["seconds_per_image"] > 0 and summary["inference"]["peak_memory_mb"] > 0
    # ISIC finishing by default: the submission holds one lesion region without holes, and says so
    assert summary["inference"]["finish"] == "lesion" and summary["inference"]["masks_changed_by_finishing"] in (0, 1)
    assert summary["inference"]["checkpoints_averaged"] == 1  # best.pt alone without --keep-best
    assert "finishing: lesion (largest region, holes filled) changed" in stdout
    with Image.open(out / "submission" / f"{test.image_id}_segmentation.png") as mask:
        assert finish_lesion_mask(np.asarray(mask))[1] == []


def test_keep_best_scores_the_test_split_with_the_kept_epochs_averaged(isic, tiny_options, tmp_path, capsys):
    import glmed

    out = tmp_path / "run"
    # the paper's loss: in this tiny run the Dice term's epochs all mark the whole image, so an
    # ensemble of them could not be told from one of them by its mask
    assert isic.main(["--demo", "--out", str(out), "--seed", "1", "--keep-best", "2", "--dice-weight", "0",
                      *tiny_options]) == 0
    stdout = capsys.readouterr().out
    assert "the 2 best validated epochs' probabilities averaged" in stdout
    assert json.loads((out / "summary.json").read_text())["inference"]["checkpoints_averaged"] == 2
    manifest = read_manifest(out / "manifest.csv")
    test = manifest[manifest["split"] == "test"].iloc[0]
    models = glmed.load_checkpoints(out, best=2)
    expected = glmed.predict(models, test.image_path, thumbnail=False, finish="lesion").mask
    best_alone = glmed.predict(models[0], test.image_path, thumbnail=False, finish="lesion").mask
    with Image.open(out / "submission" / f"{test.image_id}_segmentation.png") as mask:
        written = np.asarray(mask)
    assert np.array_equal(written, np.where(expected > 0, 255, 0))
    # the ensemble is not best.pt under another name: on this run their masks differ
    assert not np.array_equal(expected, best_alone)


def test_scores_file_agrees_with_glmed_score_on_the_submission(demo_run, tmp_path, capsys):
    out, _ = demo_run
    assert glmed_main(["score", str(out / "test_truth"), str(out / "submission"), "--csv",
                       str(tmp_path / "cli.csv")]) == 0
    assert (tmp_path / "cli.csv").read_bytes() == (out / "scores.csv").read_bytes()
    scores = pd.read_csv(out / "scores.csv", index_col="image_id")
    summary = json.loads((out / "summary.json").read_text())["test"]
    assert summary["threshold_jaccard"] == pytest.approx(scores["threshold_jaccard"].mean(), abs=1e-12)
    assert f"threshold_jaccard  {summary['threshold_jaccard']:.6f}" in capsys.readouterr().out


def test_resuming_a_finished_run_redoes_nothing(isic, demo_run, capsys):
    out, _ = demo_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert isic.main(["--resume", "--out", str(out)]) == 0
    assert "is finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_a_wrong_data_layout_names_what_was_expected_and_found(isic, tmp_path, capsys):
    data = tmp_path / "not_isic"
    (data / "images").mkdir(parents=True)
    out = tmp_path / "run"
    assert isic.main(["--data", str(data), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "ISIC2018_Task1-2_Training_Input" in error and "ISIC2018_Task1_Training_GroundTruth" in error
    assert "images" in error.split("found")[1]
    assert not (out / "config.json").exists()  # nothing half-made: the same command works once fixed


def test_out_of_range_values_are_rejected_before_any_work(isic, tmp_path, capsys):
    out = tmp_path / "run"
    code = isic.main(["--demo", "--out", str(out), "--patch-size", "64", "--overlap", "64", "--gamma", "-1",
                      "--epochs", "1", "2", "--sharing", "local_only", "--global-lr", "0"])
    assert code == 2
    error = capsys.readouterr().err
    for option in ("--overlap 64", "--gamma -1", "--epochs 1 2", "--sharing local_only", "--global-lr 0"):
        assert option in error
    assert not out.exists()


@pytest.mark.parametrize("arguments, message", [
    (["--data", "somewhere", "--demo"], "exclude each other"),
    ([], "give --data ROOT"),
])
def test_data_must_be_given_one_way(isic, tmp_path, capsys, arguments, message):
    assert isic.main(["--out", str(tmp_path / "run"), *arguments]) == 2
    assert message in capsys.readouterr().err


def test_an_unwritable_out_fails_at_once(isic, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert isic.main(["--demo", "--out", str(blocker / "run")]) == 2
    assert "cannot be written" in capsys.readouterr().err


def test_a_run_folder_is_not_reused_by_accident(isic, demo_run, tiny_options, capsys):
    out, _ = demo_run
    assert isic.main(["--demo", "--out", str(out), *tiny_options]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert isic.main(["--resume", "--out", str(out), "--epochs", "5"]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_a_given_manifest_and_pretrained_backbone_are_used(isic, demo_run, tiny_options, tmp_path):
    """Only the bidirectional stage (which trains the listening convolutions and the aggregation
    head) runs, so both branches' encoders must still hold the pretrained file's weights."""
    source = ResNetEncoder("resnet18")
    for parameter in source.parameters():
        torch.nn.init.normal_(parameter)
    weights = tmp_path / "resnet18-imagenet.pth"
    torch.save(source.state_dict(), weights)
    given, _ = demo_run
    out = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        code = isic.main(["--manifest", str(given / "manifest.csv"), "--out", str(out), *tiny_options,
                          "--epochs", "0", "0", "1", "--backbone", "resnet18", "--pretrained-backbone", str(weights)])
    assert code == 0
    columns = ["image_id", "split"]
    pd.testing.assert_frame_equal(read_manifest(out / "manifest.csv")[columns],
                                  read_manifest(given / "manifest.csv")[columns])
    assert not (out / "data").exists()
    state = load_checkpoint(out / "checkpoints" / "best.pt")["model"]
    for branch in ("global_branch", "local_branch"):
        for key, value in source.state_dict().items():
            assert torch.equal(state[f"{branch}.encoder.{key}"], value), (branch, key)


def test_a_missing_or_unfitting_pretrained_file_is_refused_before_any_work(isic, tmp_path, capsys):
    out = tmp_path / "run"
    assert isic.main(["--demo", "--out", str(out), "--pretrained-backbone", str(tmp_path / "nowhere.pth")]) == 2
    assert "--pretrained-backbone" in capsys.readouterr().err and not out.exists()
    weights = tmp_path / "resnet18.pth"
    torch.save(ResNetEncoder("resnet18").state_dict(), weights)
    code = isic.main(["--demo", "--out", str(out), "--backbone", "resnet50", "--pretrained-backbone", str(weights)])
    assert code == 2
    assert "does not fit a resnet50 encoder" in capsys.readouterr().err
    assert not (out / "config.json").exists()  # nothing started: the fixed command runs without --resume


def test_bad_masks_are_all_listed_before_the_run_starts(isic, tmp_path, capsys):
    from glmed.data.synthetic import write_isic_dataset

    data = write_isic_dataset(tmp_path / "isic", 4, sizes=[(64, 80)] * 4)
    truth = data / "ISIC2018_Task1_Training_GroundTruth"
    for name in ("ISIC_0000001_segmentation.png", "ISIC_0000003_segmentation.png"):
        Image.fromarray(np.full((64, 80), 7, np.uint8)).save(truth / name)  # not a 0/255 mask
    out = tmp_path / "run"
    assert isic.main(["--data", str(data), "--out", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "2 problem(s)" in error and "ISIC_0000001_segmentation.png" in error and "ISIC_0000003" in error
    assert not (out / "config.json").exists()


def test_the_boundary_loss_options_are_checked_before_any_work(isic, tmp_path, capsys):
    from glmed.experiments.config import RecipeConfig

    assert RecipeConfig(demo=True, boundary_weight=0.5).problems() == []
    out = tmp_path / "run"
    assert isic.main(["--demo", "--out", str(out), "--boundary-weight", "-1", "--boundary-width", "0"]) == 2
    error = capsys.readouterr().err
    assert "--boundary-weight -1" in error and "--boundary-width 0" in error
    assert not out.exists()


def test_finishing_is_on_for_isic_unless_turned_off_and_off_for_the_other_datasets(isic, load_recipe):
    from glmed.experiments.config import RecipeConfig

    config = isic.RECIPE.config_class(demo=True)
    assert isic.RECIPE.finish_for(config) == "lesion"
    assert isic.RECIPE.finish_for(replace(config, finish="none")) is None
    for name in ("deepglobe_glnet", "inria_glnet"):
        other = load_recipe(name).RECIPE
        assert other.finish_for(other.config_class(demo=True)) is None
    assert load_recipe("inria_glnet").RECIPE.finish_for(RecipeConfig(demo=True, finish="lesion")) == "lesion"
    with pytest.raises(ConfigError, match="--finish lesion: lesion finishing keeps one region of a two-class mask; "
                                          "this dataset has 7 classes"):
        RecipeConfig(demo=True, finish="lesion", num_classes=7).check()


def test_finish_none_is_an_option_of_the_command_line(isic):
    from glmed.experiments.config import given_values
    from glmed.experiments.recipe import build_parser

    args = build_parser(isic.RECIPE).parse_args(["--out", "run", "--finish", "none"])
    assert given_values(args, isic.RECIPE.config_class)["finish"] == "none"
    with pytest.raises(SystemExit):
        build_parser(isic.RECIPE).parse_args(["--out", "run", "--finish", "nothing"])
