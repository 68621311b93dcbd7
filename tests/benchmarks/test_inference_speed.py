"""benchmarks/inference_speed.py: every case runs in quick mode, with numbers, ratios to the sliding window."""

import math

import numpy as np
import pandas as pd
import pytest
from benchmark_scripts import load_script


def _load():
    return load_script("inference_speed")


def test_ratios_divide_by_the_sliding_window_of_the_same_lesion():
    module = _load()
    rows = [
        {"lesion": 0.1, "case": "flexible_unet_sw", "status": "ok", "seconds": 10.0, "peak_mb": 100.0},
        {"lesion": 0.1, "case": "c2f_uncertain", "status": "ok", "seconds": 5.0, "peak_mb": 80.0},
        {"lesion": 0.25, "case": "c2f_uncertain", "status": "ok", "seconds": 10.0, "peak_mb": 50.0},
        {"lesion": 0.25, "case": "flexible_unet_sw", "status": "ok", "seconds": 20.0, "peak_mb": 200.0},
        {"lesion": 0.25, "case": "glnet_g2l", "status": "not run"},
        {"lesion": 0.5, "case": "flexible_unet_sw", "status": "failed", "notes": "boom"},
        {"lesion": 0.5, "case": "c2f_box", "status": "ok", "seconds": 30.0, "peak_mb": 90.0},
    ]
    table = module.finish(rows)
    ratios = {(row.lesion, row.case): (row.time_x, row.memory_x) for row in table.itertuples()}
    assert ratios[(0.1, "flexible_unet_sw")] == (1.0, 1.0)
    assert ratios[(0.1, "c2f_uncertain")] == (0.5, 0.8)
    assert ratios[(0.25, "c2f_uncertain")] == (0.5, 0.25)  # its own lesion's window, not the 10% one
    assert all(math.isnan(v) for v in ratios[(0.25, "glnet_g2l")])  # not run: no ratio
    assert all(math.isnan(v) for v in ratios[(0.5, "c2f_box")])  # no reference at that lesion: no ratio
    assert table["method"].tolist()[0] == module.CASES["flexible_unet_sw"]


@pytest.mark.slow
def test_quick_mode_runs_every_case_with_numbers(capsys, tmp_path):
    module = _load()
    csv, png = tmp_path / "speed.csv", tmp_path / "speed.png"
    # one lesion and the least training: eight fresh processes (preparation, then each case) in about a minute
    argv = ["--quick", "--lesions", "0.3", "--train-images", "2", "--epochs", "1", "1", "1"]
    assert module.main([*argv, "--csv", str(csv), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(csv)
    assert table["case"].tolist() == list(module.CASES)  # every case, in order, at the one lesion
    assert (table["status"] == "ok").all(), table[["case", "status", "notes"]].to_string()
    assert (table["seconds"] > 0).all() and (table["peak_mb"] >= 0).all()
    assert table["jaccard"].between(0, 1).all()
    assert (table["patches"] >= 1).all()
    assert abs(table["lesion"].iloc[0] - 0.3) < 0.01  # the generated truth covers what was asked
    reference = table.set_index("case").loc["flexible_unet_sw"]
    assert np.allclose(table["time_x"], table["seconds"] / reference["seconds"], atol=1e-3)  # rounded to 3 places
    assert np.allclose(table["memory_x"], table["peak_mb"] / reference["peak_mb"], atol=1e-3)
    sliding = table[table["case"] == "flexible_unet_sw"].iloc[0]
    assert sliding["time_x"] == 1.0 and sliding["memory_x"] == 1.0
    assert (table["weights"] == "trained here").all()
    for case in ("c2f_box", "c2f_uncertain"):  # the box is reported: found the lesion or not, its size against it
        note = table.set_index("case").loc[case, "notes"]
        assert ("found the lesion" in note or "did NOT find the lesion" in note) and "the lesion's area" in note
    cases = table.set_index("case")  # reuse_encoder: the same mask, and the note says the maps were taken
    assert cases.loc["glnet_bidirectional_kept", "jaccard"] == cases.loc["glnet_bidirectional", "jaccard"]
    assert "reuse_encoder: the final pass took" in cases.loc["glnet_bidirectional_kept", "notes"]
    for label in module.CASES.values():
        assert label in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reuse_keeps_the_prepared_image_nearest_each_wanted_lesion(tmp_path):
    module = _load()
    tests = [{"fraction": 0.102}, {"fraction": 0.247}, {"fraction": 0.51}]
    assert module.reused_tests(tests, [0.1]) == [tests[0]]
    assert module.reused_tests(tests, [0.5, 0.25]) == [tests[1], tests[2]]  # prepared order
    assert module.reused_tests(tests, [0.1, 0.25, 0.5]) == tests
    with pytest.raises(RuntimeError, match="prepared.json"):  # nothing prepared there: says what to do
        module.run(module.QUICK, tmp_path, log=lambda line: None, reuse=True)


def test_amp_bf16_reaches_every_kind_of_case(monkeypatch):
    import torch

    import glmed

    module = _load()
    settings = module.QUICK._replace(amp="bf16", patch_size=32, overlap=8)
    image = np.zeros((40, 56, 3), dtype=np.uint8)
    seen = []

    def logits(network, tiles):  # records whether the baseline's network runs under bf16 autocast
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return torch.zeros(len(tiles), 2, *tiles.shape[2:], dtype=torch.bfloat16)

    monkeypatch.setattr(module, "local_branch_logits", logits)
    mask, _ = module.infer("local_sw", None, image, settings, "cpu")
    assert mask.shape == image.shape[:2] and seen and all(seen)
    seen.clear()
    module.infer("full_image", None, image, settings, "cpu")
    assert seen == [True]

    asked = {}

    def fake_predict(network, pixels, **options):
        asked.update(options)
        raise RuntimeError("stop here")

    monkeypatch.setattr(glmed, "predict", fake_predict)
    with pytest.raises(RuntimeError, match="stop here"):
        module.infer("c2f_uncertain", None, image, settings, "cpu")
    assert asked["amp"] == "bf16" and asked["refine"] == "uncertain"
    asked.clear()
    with pytest.raises(RuntimeError, match="stop here"):
        module.infer("glnet_g2l", None, image, settings._replace(amp="off"), "cpu")
    assert "amp" not in asked  # float32: predict's own default
