"""benchmarks/augmentation_accuracy.py: the quick mode trains with and without augmentation and prints both rows."""

import pandas as pd
import pytest
from benchmark_scripts import load_script, markdown_table


def _load():
    return load_script("augmentation_accuracy")


def _first_table(text: str) -> list[dict[str, str]]:
    return markdown_table(text, "setting")


@pytest.mark.slow
def test_quick_mode_compares_no_augmentation_with_the_dermoscopy_preset(capsys, tmp_path):
    module = _load()
    assert module.main(["--quick", "--csv", str(tmp_path / "runs.csv")]) == 0
    rows = _first_table(capsys.readouterr().out)
    assert [row["setting"] for row in rows] == ["no augmentation", "dermoscopy preset"]
    for row in rows:
        assert row["runs"] == "2"
        mean, spread = (float(part) for part in row["thresholded Jaccard"].split(" ± "))
        low, high = (float(part) for part in row["min-max"].split("-"))
        assert 0 <= low <= mean <= high <= 1 and spread >= 0
        assert 0 <= float(row["Jaccard"]) <= 1
        assert float(row["train min"]) > 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    # seed by seed, both settings in turn (a run stopped early still compares them)
    assert runs[["augment", "seed"]].values.tolist() == [["none", 0], ["dermoscopy", 0], ["none", 1],
                                                         ["dermoscopy", 1]]
    for column in ("threshold_jaccard", "jaccard"):
        assert runs[column].between(0, 1).all()
    assert (runs["under_065"] <= runs["images"]).all() and (runs["images"] == 2).all()
    assert (runs["threshold_jaccard"] <= runs["jaccard"] + 1e-9).all()  # thresholding only lowers scores
