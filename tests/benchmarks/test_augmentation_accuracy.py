"""benchmarks/augmentation_accuracy.py: the quick mode trains with and without augmentation and prints both rows."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "augmentation_accuracy.py"


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_augmentation_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_table(text: str) -> list[dict[str, str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| setting "))
    table = []
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    assert set("".join(table[1]).split("---")) <= {""}  # the Markdown rule under the header
    return [dict(zip(table[0], row)) for row in table[2:]]


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
