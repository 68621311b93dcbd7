"""glmed's ISIC scorer on untidy folders: hidden files, and every problem reported in one error.

The numbers themselves are checked against the official scorer in test_isic_scoring.py; here a
folder with hidden files must give exactly the table of the same folder without them.
"""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from glmed.inference.provenance import RECORD_NAME
from glmed.metrics.isic import (
    GroundTruthError,
    HiddenFilesWarning,
    SubmissionError,
    match_submission,
    score_submission,
)


def _cases(make_blob, n=3):
    return {f"ISIC_{i:07d}": (make_blob((30, 40), seed=i), make_blob((30, 40), seed=i, scale=1.2)) for i in range(n)}


def test_hidden_files_in_either_folder_are_ignored_and_named(make_submission, make_blob):
    truth_dir, prediction_dir = make_submission(_cases(make_blob))
    clean = score_submission(truth_dir, prediction_dir)
    (truth_dir / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (prediction_dir / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (prediction_dir / "._ISIC_0000001_segmentation.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS copy
    (prediction_dir / ".ipynb_checkpoints").mkdir()
    with pytest.warns(HiddenFilesWarning, match=r"ignored 4 hidden file\(s\)") as record:
        table = score_submission(truth_dir, prediction_dir)
    assert str(truth_dir / ".DS_Store") in str(record[0].message)
    pd.testing.assert_frame_equal(table, clean, check_exact=True)  # the official numbers, bit for bit
    assert table.attrs["summary"] == clean.attrs["summary"] and table.attrs["ignored_predictions"] == []
    assert len(table.attrs["hidden_files"]) == 4
    assert match_submission(truth_dir, prediction_dir).hidden[0] == truth_dir / ".DS_Store"


def test_glmeds_own_run_record_is_ignored_without_a_warning(make_submission, make_blob):
    truth_dir, prediction_dir = make_submission(_cases(make_blob, 1))
    (prediction_dir / RECORD_NAME).write_text('{"checkpoint": "ISIC_0000000"}')  # digits in it match nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = score_submission(truth_dir, prediction_dir)
    assert table.attrs["hidden_files"] == [str(prediction_dir / RECORD_NAME)]


def test_missing_files_and_format_and_size_problems_come_in_one_error(make_submission, make_blob, save):
    truth_dir, prediction_dir = make_submission(_cases(make_blob, 5))
    (prediction_dir / "ISIC_0000000_segmentation.png").unlink()  # missing
    save(prediction_dir / "ISIC_0000001_segmentation.png", make_blob((30, 40), seed=1), mode="RGB")  # format
    save(prediction_dir / "ISIC_0000002_segmentation.png", make_blob((31, 40), seed=2))  # size
    save(prediction_dir / "ISIC_0000003_copy.png", make_blob((30, 40), seed=3))  # duplicate
    with pytest.raises(SubmissionError) as info:
        score_submission(truth_dir, prediction_dir)
    problems = info.value.problems
    assert len(problems) == 4  # ISIC_0000004 is fine
    assert "no prediction for ISIC_0000000" in problems[0].reason
    assert problems[1].paths == (prediction_dir / "ISIC_0000001_segmentation.png",)
    assert "greyscale" in problems[1].reason
    assert problems[2].paths == (prediction_dir / "ISIC_0000002_segmentation.png",) and "40×31" in problems[2].reason
    assert "2 predictions match ISIC_0000003" in problems[3].reason
    assert str(info.value).count("\n") == 4  # the summary line, then one line per problem


def test_truth_and_submission_problems_are_listed_together(make_submission, make_blob):
    truth_dir, prediction_dir = make_submission(_cases(make_blob, 3))
    (truth_dir / "notes.txt").write_text("split B")  # a stray truth file
    (truth_dir / "ISIC_0000001_segmentation.png").write_bytes(b"truncated")  # its prediction is missing too
    (prediction_dir / "ISIC_0000001_segmentation.png").unlink()
    (prediction_dir / "ISIC_0000002_segmentation.png").write_bytes(b"")
    with pytest.raises(GroundTruthError, match="submission .* is rejected too") as info:
        score_submission(truth_dir, prediction_dir)
    assert info.value.paths == (truth_dir / "notes.txt", truth_dir / "ISIC_0000001_segmentation.png",
                                truth_dir / "ISIC_0000001_segmentation.png",
                                prediction_dir / "ISIC_0000002_segmentation.png")
    assert "cannot be decoded" in info.value.problems[1].reason
    assert "no prediction for ISIC_0000001" in info.value.problems[2].reason


def test_match_submission_still_rejects_missing_predictions(make_submission, make_blob):
    truth_dir, prediction_dir = make_submission(_cases(make_blob, 2))
    (prediction_dir / "ISIC_0000001_segmentation.png").unlink()
    with pytest.raises(SubmissionError, match="no prediction for ISIC_0000001"):
        match_submission(truth_dir, prediction_dir)
