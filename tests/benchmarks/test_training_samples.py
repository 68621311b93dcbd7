"""benchmarks/training_samples.py: the quick mode prints a row for every stage kind and path, all rates positive."""

import pytest
from benchmark_scripts import load_script


def _load():
    return load_script("training_samples")


def _table(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").split()) == {"---"}
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


@pytest.mark.slow
def test_quick_mode_has_every_row_with_positive_rates(capsys):
    assert _load().main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "usable cores" in out
    rows = _table(out)
    expected = [(stage, path, workers) for stage in ("global", "local", "collect")
                for path, workers in (("main thread", "–"), ("DataLoader", "0"), ("DataLoader", "1"),
                                      ("DataLoader", "2"))]
    assert [(row["stage"], row["path"], row["workers"]) for row in rows] == expected
    for row in rows:
        assert float(row["samples/s"]) > 0
        assert float(row["ms/sample"]) > 0
        assert float(row["speed-up"].rstrip("×")) > 0
        assert float(row["warm-up s"]) >= 0
        assert float(row["CPU ms/sample"]) > 0
    assert all(row["speed-up"] == "1.00×" for row in rows if row["path"] == "main thread")
    assert all(float(row["patches/sample"]) == 0 for row in rows if row["stage"] == "global")
    assert all(float(row["patches/sample"]) >= 1 for row in rows if row["stage"] != "global")
