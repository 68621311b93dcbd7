"""The recipes' command line: --help shows the paper's default and the demo's; a missing device is refused."""

import contextlib
import io
import re

import pytest

from glmed.experiments.recipe import build_parser


def _help(recipe) -> str:
    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit):
        recipe.main(["--help"])
    return " ".join(out.getvalue().split())  # argparse wraps lines where it likes


def _option_help(recipe, flag: str) -> str:
    return next(action.help for action in build_parser(recipe.RECIPE)._actions if flag in action.option_strings)


@pytest.mark.parametrize("name", ["isic_c2f", "deepglobe_glnet", "inria_glnet"])
def test_help_shows_the_paper_and_the_demo_defaults(load_recipe, name):
    recipe = load_recipe(name)
    demo = recipe.DEMO
    text = _help(recipe)
    assert f"(default: 508; with --demo: {demo['global_size']})" in text
    assert f"(default: resnet50; with --demo: {demo['backbone']})" in text
    epochs = " ".join(map(str, demo["epochs"]))
    assert re.search(rf"\(default: \d+ \d+ \d+; with --demo: {epochs}\)", text)
    assert "with --demo' replace them" in text


def test_options_only_the_demo_uses_show_the_demos_value(load_recipe):
    isic = load_recipe("isic_c2f")
    images = isic.DEMO["images"]
    assert _option_help(isic, "--images") == f"with --demo: how many images to generate (default: {images})"
    assert _option_help(isic, "--gamma").endswith("(default: 6.0)")  # --demo keeps the paper's loss
    assert _option_help(isic, "--split").endswith("(default: the paper's for the dataset) (with --demo: 32 4 10)")


def test_a_cuda_device_the_machine_lacks_is_refused_before_any_work(load_recipe, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    assert load_recipe("isic_c2f").main(["--demo", "--out", str(out), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: this machine has no CUDA device (torch " in err and "use --device cpu" in err
    assert not out.exists()


def test_the_isic_recipe_trains_with_the_dice_term_unless_told_otherwise(load_recipe, tmp_path):
    from glmed.experiments.recipe import new_config

    isic, deepglobe = load_recipe("isic_c2f").RECIPE, load_recipe("deepglobe_glnet").RECIPE
    assert new_config(isic, {"data": tmp_path}).dice_weight == 1.0
    assert new_config(isic, {"demo": True}).dice_weight == 1.0
    assert new_config(isic, {"demo": True, "dice_weight": 0.0}).dice_weight == 0.0  # the paper's loss, on request
    assert new_config(isic, {"data": tmp_path}).gamma == 6.0  # the rest of the paper's loss is kept
    assert new_config(deepglobe, {"demo": True}).dice_weight == 0.0


def test_help_names_a_recipe_default_that_departs_from_the_papers(load_recipe):
    isic, deepglobe = load_recipe("isic_c2f"), load_recipe("deepglobe_glnet")
    assert _option_help(isic, "--dice-weight").endswith("(default: 1.0, this recipe's; the paper's: 0.0)")
    assert _option_help(deepglobe, "--dice-weight").endswith("(default: 0.0)")
    assert "except where an option's help names this recipe's own" in _help(isic)
