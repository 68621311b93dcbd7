"""benchmarks/accuracy_vs_monai.py: every row trained and scored, the peers at glmed's CPU time, rows grouped right."""

import numpy as np
import pandas as pd
import pytest
from benchmark_scripts import load_script, markdown_table


def _load():
    return load_script("accuracy_vs_monai")


def _first_table(text: str) -> list[dict[str, str]]:
    return markdown_table(text, "row")


def test_rows_share_a_training_only_when_their_weights_are_the_same():
    module = _load()
    key = {name: module.training_key(row) for name, row in module.ROWS.items()}
    # one bidirectional GLNet read after each stage; finishing reads the box model's weights
    assert key["global_only"] == key["g2l"] == key["bidirectional"] == ("glnet", ())
    assert key["box+finish"] == key["box"] == key["box+grow"] == ("c2f", ())
    assert key["box+boundary"] == ("c2f", module.ADDITIONS["boundary"].train) != key["box"]
    assert key["box+dice"] == ("c2f", module.ADDITIONS["dice"].train) != key["box"]
    # every addition together: one training with both loss terms
    assert key["box+all"] == ("c2f", tuple(sorted(module.ADDITIONS["boundary"].train + module.ADDITIONS["dice"].train)))
    assert len({key["monai_global"], key["monai_local"], key["local_only"], key["box"], key["global_only"]}) == 5
    for name, row in module.ROWS.items():
        assert row.read == "peer" or row.read in module.STAGE_READ, name


def test_an_addition_needing_a_predict_keyword_glmed_lacks_is_unavailable(monkeypatch):
    module = _load()
    monkeypatch.setitem(module.ADDITIONS, "future", module.Addition("a future option", predict=(("no_such", 1),)))
    row = module.Row("box + a future option", "c2f", "box", ("future",))
    assert module.unavailable(row) == "unavailable: glmed.predict has no no_such="
    everything = module.ROWS["box+all"]
    assert "future" not in module.row_additions(everything)  # "all" takes the available ones only
    assert {"boundary", "finish"} <= set(module.row_additions(everything))
    assert module.unavailable(everything) is None
    assert module.unavailable(module.ROWS["box+finish"]) is None


def test_half_the_windows_are_centred_on_the_lesion():
    from glmed.io.open import as_reader

    module = _load()
    label = np.zeros((300, 400), np.uint8)
    label[200:240, 300:360] = 1  # a small lesion in one corner: windows anywhere would rarely hold it
    boxes = module.lesion_windows(as_reader(label, name="label"), 40, 32, np.random.default_rng(0))
    assert boxes.shape == (40, 4)
    assert ((boxes[:, 2] - boxes[:, 0]) == 32).all() and ((boxes[:, 3] - boxes[:, 1]) == 32).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 300).all() and (boxes[:, 3] <= 400).all()
    centres = [label[(r0 + r1) // 2, (c0 + c1) // 2] for r0, c0, r1, c1 in boxes[::2]]
    assert all(centres)  # every other window's centre is a lesion pixel
    assert sum(label[r0:r1, c0:c1].any() for r0, c0, r1, c1 in boxes[1::2]) < 15  # the rest mostly skin


def test_peers_get_the_costliest_box_models_time():
    module = _load()
    spent = {("glnet", ()): 50.0, ("c2f", ()): 20.0, ("c2f", (("boundary_weight", 0.05),)): 30.0}
    assert module.peer_budget(spent, module.Settings()) == 30.0
    assert module.peer_budget({("glnet", ()): 50.0, ("local_only", ()): 10.0}, module.Settings()) == 50.0
    assert module.peer_budget({}, module.Settings(peer_cpu_minutes=2.0)) == 120.0


def test_a_run_leaves_out_only_the_optional_rows_unless_asked():
    module = _load()
    assert module.Settings().rows == module.DEFAULT_ROWS == module.QUICK.rows
    assert set(module.ROWS) - set(module.DEFAULT_ROWS) == set(module.OPTIONAL_ROWS) == {"box+dice"}
    settings, _ = module.parse(["--rows", "box+dice", "box"])
    assert settings.rows == ("box", "box+dice")  # the table's order


def test_summary_gives_mean_spread_and_range_over_seeds_and_says_why_a_row_is_missing():
    module = _load()
    runs = pd.DataFrame([
        {"row": "box", "seed": 0, "status": "ok", "threshold_jaccard": 0.5, "jaccard": 0.6, "under_065": 2,
         "images": 4, "cpu_minutes": 1.0, "steps": 10},
        {"row": "box", "seed": 1, "status": "ok", "threshold_jaccard": 0.7, "jaccard": 0.8, "under_065": 1,
         "images": 4, "cpu_minutes": 3.0, "steps": 10},
        {"row": "box+tta", "seed": 0, "status": "unavailable: glmed.predict has no tta="},
    ])
    table = module.summarise(runs, ["box", "box+tta", "g2l"]).set_index("row")
    box = table.loc[module.ROWS["box"].label]
    assert box["runs"] == 2 and box["thresholded Jaccard"] == "0.600 ± 0.141" and box["min–max"] == "0.500–0.700"
    assert box["images < 0.65"] == "1.5 / 4" and box["CPU min"] == "2.0"
    assert table.loc[module.ROWS["box+tta"].label, "thresholded Jaccard"].startswith("unavailable")
    assert table.loc[module.ROWS["g2l"].label, "thresholded Jaccard"] == "not run"


@pytest.mark.slow
def test_smoke_run_trains_and_scores_every_row(capsys, tmp_path):
    module = _load()
    argv = ["--quick", "--size", "96", "128", "--train", "2", "--val", "0", "--test", "2", "--epochs", "1", "1", "1",
            "--rows", *module.ROWS]
    assert module.main([*argv, "--csv", str(tmp_path / "runs.csv")]) == 0
    rows = _first_table(capsys.readouterr().out)
    labels = [row["row"] for row in rows]
    assert len(labels) == len(module.ROWS)
    for key, label in zip(module.ROWS, labels, strict=True):  # every row, in order
        assert label.startswith(module.ROWS[key].label)
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert runs["row"].tolist() == list(module.ROWS) and (runs["seed"] == 0).all()
    done = runs[runs["status"] == "ok"]
    missing = runs[runs["status"] != "ok"]
    assert set(missing["row"]) <= {"box+tta"}  # only an addition the installed glmed lacks may be missing
    assert missing["status"].str.startswith("unavailable: glmed.predict has no").all()
    for column in ("threshold_jaccard", "jaccard"):
        assert done[column].between(0, 1).all()
    assert (done["threshold_jaccard"] <= done["jaccard"] + 1e-9).all()  # thresholding only lowers scores
    assert (done["images"] == 2).all() and done["under_065"].between(0, 2).all()
    assert (done["cpu_minutes"] > 0).all() and (done["steps"] >= 1).all()
    cpu = done.set_index("row")["cpu_minutes"]
    boxes = [key for key in done["row"] if key.startswith("box")]
    for peer in ("monai_global", "monai_local"):  # the peers trained at least as long as any box model
        assert cpu[peer] >= cpu[boxes].max() - 1e-9
    for row in rows:
        if row["runs"] == "1":
            mean, spread = (float(part) for part in row["thresholded Jaccard"].split(" ± "))
            assert 0 <= mean <= 1 and spread == 0  # one seed has no spread
            assert row["images < 0.65"].endswith("/ 2")


@pytest.mark.slow
def test_two_worker_processes_give_the_in_process_scores(tmp_path):
    """Trainings spread over worker processes (spawned, one torch thread each) score what one process scores."""
    import subprocess
    import sys

    from benchmark_scripts import BENCHMARKS

    argv = ["--quick", "--size", "96", "128", "--train", "2", "--test", "2", "--epochs", "1", "1", "1",
            "--rows", "global_only", "box", "box+finish", "monai_global"]
    runs = {}
    for workers in (1, 2):
        csv = tmp_path / f"runs{workers}.csv"
        done = subprocess.run([sys.executable, str(BENCHMARKS / "accuracy_vs_monai.py"), *argv, "--workers",
                               str(workers), "--csv", str(csv)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[workers] = pd.read_csv(csv).set_index("row")
    assert runs[2].index.tolist() == ["monai_global", "global_only", "box", "box+finish"]  # the table's order
    glmed_rows = ["global_only", "box", "box+finish"]
    for column in ("threshold_jaccard", "jaccard", "under_065", "steps"):  # same seeds, one thread: same numbers
        assert runs[2].loc[glmed_rows, column].tolist() == runs[1].loc[glmed_rows, column].tolist(), column
    cpu = runs[2]["cpu_minutes"]
    assert cpu["monai_global"] >= cpu["box"] - 1e-9  # the peer waited for its seed's box model's time
