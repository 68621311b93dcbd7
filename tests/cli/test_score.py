"""The ``glmed score`` command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd

from glmed.cli import main
from glmed.metrics.isic import score_submission


def _submission(make_submission, make_blob):
    cases = {f"ISIC_000000{i}": (make_blob((30, 40), seed=i), make_blob((30, 40), seed=i, scale=1.2))
             for i in range(3)}
    return make_submission(cases)


def test_prints_headline_first_and_writes_the_table(make_submission, make_blob, tmp_path, capsys):
    truth_dir, prediction_dir = _submission(make_submission, make_blob)
    csv = tmp_path / "out" / "scores.csv"
    assert main(["score", str(truth_dir), str(prediction_dir), "--csv", str(csv)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "3 images" in lines[0] and lines[1].split()[0] == "threshold_jaccard"
    expected = score_submission(truth_dir, prediction_dir)
    written = pd.read_csv(csv, index_col="image_id")
    pd.testing.assert_frame_equal(written, expected, check_dtype=False, rtol=0, atol=0)
    assert f"{expected.attrs['summary']['threshold_jaccard']:.6f}" in lines[1]


def test_json_summary_has_full_precision(make_submission, make_blob, capsys):
    truth_dir, prediction_dir = _submission(make_submission, make_blob)
    expected = score_submission(truth_dir, prediction_dir).attrs["summary"]
    (prediction_dir / "notes.txt").write_text("extra")
    assert main(["score", str(truth_dir), str(prediction_dir), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["threshold_jaccard"] == expected["threshold_jaccard"]
    assert summary["ignored_predictions"] == ["notes.txt"] and summary["images"] == 3
    assert "WARNING" in captured.err and "notes.txt" in captured.err


def test_rejected_submission_exits_nonzero_with_the_reason(make_submission, make_blob, capsys):
    truth_dir, prediction_dir = _submission(make_submission, make_blob)
    (prediction_dir / "ISIC_0000001_segmentation.png").write_bytes(np.zeros(10, np.uint8).tobytes())
    assert main(["score", str(truth_dir), str(prediction_dir)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ISIC_0000001_segmentation.png" in captured.err and "cannot be decoded" in captured.err
    assert "Traceback" not in captured.err


def test_zero_one_prediction_warns_on_stderr(make_submission, make_blob, capsys):
    mask = make_blob((20, 20), seed=0)
    truth_dir, prediction_dir = make_submission({"ISIC_0000000": (mask, mask // 255)})
    assert main(["score", str(truth_dir), str(prediction_dir)]) == 0
    assert "EMPTY" in capsys.readouterr().err


def test_module_defers_heavy_imports():
    code = "import sys, glmed.cli.score; print(sorted({'pandas', 'numpy', 'PIL'} & set(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_a_ds_store_in_the_truth_folder_is_ignored_with_a_note(make_submission, make_blob, capsys):
    truth_dir, prediction_dir = _submission(make_submission, make_blob)
    expected = score_submission(truth_dir, prediction_dir).attrs["summary"]
    (truth_dir / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    assert main(["score", str(truth_dir), str(prediction_dir), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["threshold_jaccard"] == expected["threshold_jaccard"]
    assert "glmed score: note: ignored 1 hidden file(s)" in captured.err and ".DS_Store" in captured.err
    assert "WARNING" not in captured.err


def test_missing_and_unreadable_predictions_are_reported_in_one_run(make_submission, make_blob, save, capsys):
    truth_dir, prediction_dir = _submission(make_submission, make_blob)
    (prediction_dir / "ISIC_0000000_segmentation.png").unlink()
    save(prediction_dir / "ISIC_0000002_segmentation.png", make_blob((30, 40), seed=2), mode="RGB")
    assert main(["score", str(truth_dir), str(prediction_dir)]) == 1
    err = capsys.readouterr().err
    assert "no prediction for ISIC_0000000" in err and "ISIC_0000002_segmentation.png: is not a single-channel" in err


def test_bad_workers_option_is_refused(make_submission, make_blob, capsys):
    truth_dir, prediction_dir = _submission(make_submission, make_blob)
    assert main(["score", str(truth_dir), str(prediction_dir), "--workers", "0"]) == 1
    assert capsys.readouterr().err.strip() == "glmed score: error: --workers must be at least 1, got 0"
