"""glmed's ISIC 2018 Task 1 scorer against the official ``isic-challenge-scoring`` package.

Every accepted case compares per-image numbers (official API, one image at a time) and the
aggregate (official ``from_dir``) to 1e-9; every rejected case checks both tools reject it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import features

from glmed.metrics.confusion import METRICS
from glmed.metrics.isic import (
    HEADLINE,
    EmptyMaskWarning,
    GroundTruthError,
    IgnoredPredictionsWarning,
    ScoringError,
    SubmissionError,
    score_pair,
    score_submission,
    summarize,
)

isic_scoring = pytest.importorskip("isic_challenge_scoring", reason="the official scorer is the oracle")
from isic_challenge_scoring import ScoreError, SegmentationScore  # noqa: E402
from isic_challenge_scoring.load_image import iter_image_pairs  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("error::glmed.metrics.isic.EmptyMaskWarning"),
    pytest.mark.filterwarnings("error::glmed.metrics.isic.IgnoredPredictionsWarning"),
    # the official 5.6.0 package under pandas 3: not ours to fix
    pytest.mark.filterwarnings("ignore:The inplace keyword in Series.rename"),
]


def official_scores(truth_dir: Path, prediction_dir: Path) -> tuple[list[tuple[str, pd.Series]], pd.Series]:
    """Per-image (one image at a time through the official API) and aggregate official numbers."""
    per_image = [(pair.image_id, SegmentationScore([pair]).macro_average)
                 for pair in iter_image_pairs(truth_dir, prediction_dir)]
    return per_image, SegmentationScore.from_dir(truth_dir, prediction_dir).macro_average


def assert_matches_official(truth_dir: Path, prediction_dir: Path, **kwargs) -> pd.DataFrame:
    table = score_submission(truth_dir, prediction_dir, **kwargs)
    per_image, aggregate = official_scores(truth_dir, prediction_dir)
    assert list(table.index) == [image_id for image_id, _ in per_image]
    for (image_id, expected), (_, row) in zip(per_image, table.iterrows()):
        for metric in METRICS:
            assert row[metric] == pytest.approx(expected[metric], rel=0, abs=1e-9), (image_id, metric)
    summary = summarize(table).iloc[0]
    for metric in METRICS:
        assert summary[metric] == pytest.approx(aggregate[metric], rel=0, abs=1e-9), metric
        assert table.attrs["summary"][metric] == summary[metric]
    return table


def assert_both_reject(truth_dir: Path, prediction_dir: Path, error: type[ScoringError],
                       *names: str) -> ScoringError:
    with pytest.raises(Exception):
        SegmentationScore.from_dir(truth_dir, prediction_dir)
    with pytest.raises(error) as info:
        score_submission(truth_dir, prediction_dir)
    message = str(info.value)
    for name in names:
        assert name in message
    return info.value


def ids(n: int, start: int = 0) -> list[str]:
    return [f"ISIC_{i:07d}" for i in range(start, start + n)]


def test_random_shapes_and_values_match_official(make_submission, make_blob):
    rng = np.random.default_rng(4)
    cases = {}
    for k, image_id in enumerate(ids(36)):
        shape = (int(rng.integers(5, 90)), int(rng.integers(5, 120)))
        truth = make_blob(shape, seed=k)
        kind = k % 6
        if kind == 0:  # a related blob: IoU spread over [0, 1]
            prediction = make_blob(shape, seed=k, scale=rng.uniform(0.6, 1.4), shift=rng.normal(0, 0.05, 2))
        elif kind == 1:  # noisy copy
            prediction = np.where(rng.random(shape) < 0.1, 255 - truth, truth)
        elif kind == 2:  # grey probability-like prediction against a binary truth
            prediction = np.clip(truth * 0.6 + rng.normal(60, 40, shape), 0, 255)
        elif kind == 3:  # empty prediction
            prediction = np.zeros(shape)
        elif kind == 4:  # empty truth
            truth, prediction = np.zeros(shape), make_blob(shape, seed=k + 100)
        else:  # grey truth and grey prediction
            truth, prediction = rng.integers(0, 256, shape), rng.integers(0, 256, shape)
        cases[image_id] = (truth, prediction)
    table = assert_matches_official(*make_submission(cases))
    assert 0.0 < table["threshold_jaccard"].mean() < table["jaccard"].mean() < 1.0


@pytest.mark.parametrize("overlap, extra, expected", [
    (6499, 0, 0.0), (6500, 0, 0.65), (6501, 0, 0.6501),         # prediction inside the truth
    (10000, 5385, 0.0), (10000, 5384, 10000 / 15384),            # prediction covering the truth
])
def test_thresholded_jaccard_around_065(make_submission, overlap, extra, expected):
    truth = np.zeros(130 * 130, np.uint8)
    truth[:10000] = 255
    prediction = np.zeros_like(truth)
    prediction[:overlap + extra] = 255
    table = assert_matches_official(*make_submission(
        {"ISIC_0000000": (truth.reshape(130, 130), prediction.reshape(130, 130))}))
    assert table["threshold_jaccard"].iloc[0] == expected
    assert table["jaccard"].iloc[0] == (overlap / (10000 + extra))


def test_empty_and_full_mask_conventions(make_submission):
    empty, full = np.zeros((20, 30)), np.full((20, 30), 255)
    half = np.zeros((20, 30))
    half[:10] = 255
    cases = dict(zip(ids(5), [(empty, empty), (empty, half), (half, empty), (full, full), (full, half)]))
    table = assert_matches_official(*make_submission(cases))
    expected = {  # jaccard, dice, sensitivity, specificity, accuracy
        "ISIC_0000000": (1.0, 1.0, 1.0, 1.0, 1.0),
        "ISIC_0000001": (0.0, 0.0, 1.0, 0.5, 0.5),
        "ISIC_0000002": (0.0, 0.0, 0.0, 1.0, 0.5),
        "ISIC_0000003": (1.0, 1.0, 1.0, 1.0, 1.0),
        "ISIC_0000004": (0.5, 2 / 3, 0.5, 1.0, 0.5),
    }
    columns = ["jaccard", "dice", "sensitivity", "specificity", "accuracy"]
    for image_id, values in expected.items():
        assert tuple(table.loc[image_id, columns]) == pytest.approx(values, abs=1e-12)


def test_foreground_is_strictly_above_128(make_submission):
    truth = np.zeros((10, 10))
    truth[:, :5] = 129
    prediction = np.zeros((10, 10))
    prediction[:, :5] = 128  # reads as background, but has values above 0 and 1
    prediction[:2, :5] = 200
    table = assert_matches_official(*make_submission({"ISIC_0000000": (truth, prediction)}))
    assert tuple(table.loc["ISIC_0000000", ["tp", "fp", "fn", "tn"]]) == (10, 0, 40, 50)


@pytest.mark.parametrize("side", ["prediction", "truth"])
def test_zero_one_mask_scores_as_empty_and_warns_loudly(make_submission, make_blob, side):
    mask = make_blob((40, 50), seed=3)
    zero_one = (mask > 0).astype(np.uint8)
    truth, prediction = (mask, zero_one) if side == "prediction" else (zero_one, mask)
    with pytest.warns(EmptyMaskWarning, match=r"EMPTY.*0 for background and 255") as record:
        table = assert_matches_official(*make_submission({"ISIC_0000007": (truth, prediction)}))
    assert f"{side}/ISIC_0000007_segmentation.png (largest value 1)" in str(record[0].message)
    assert table["jaccard"].iloc[0] == 0.0


WEBP = features.check("webp")


@pytest.mark.parametrize("suffix, mode, accepted", [
    ("png", "L", True), ("png", "1", True), ("jpg", "L", True), ("tif", "L", True), ("bmp", "L", True),
    ("png", "RGB", False), ("png", "RGBA", False), ("png", "P", False), ("png", "LA", False),
    ("png", "I;16", False), ("jpg", "RGB", False), ("tif", "F", False), ("gif", "L", False),
    pytest.param("webp", "L", False, marks=pytest.mark.skipif(not WEBP, reason="no WebP in Pillow")),
])
def test_prediction_formats_accepted_and_refused_like_official(tmp_path, save, make_blob, suffix, mode, accepted):
    truth_dir, prediction_dir = tmp_path / "truth", tmp_path / "prediction"
    save(truth_dir / "ISIC_0000000_segmentation.png", make_blob((48, 64), seed=1))
    name = f"ISIC_0000000_segmentation.{suffix}"
    save(prediction_dir / name, make_blob((48, 64), seed=1, scale=0.9), mode=mode)
    if accepted:
        assert_matches_official(truth_dir, prediction_dir)
    else:
        error = assert_both_reject(truth_dir, prediction_dir, SubmissionError, name, "greyscale")
        assert error.paths == (prediction_dir / name,)


def test_rgb_truth_is_refused_like_official(tmp_path, save, make_blob):
    mask = make_blob((30, 40), seed=2)
    save(tmp_path / "t" / "ISIC_0000000_segmentation.png", mask, mode="RGB")
    save(tmp_path / "p" / "ISIC_0000000_segmentation.png", mask)
    assert_both_reject(tmp_path / "t", tmp_path / "p", GroundTruthError, "ISIC_0000000_segmentation.png", "'RGB'")


def test_odd_sizes_match_official(make_submission, make_blob):
    shapes = [(1, 1), (1, 13), (17, 1), (333, 777), (767, 1022)]
    cases = {image_id: (make_blob(shape, seed=i), make_blob(shape, seed=i, scale=1.1))
             for i, (image_id, shape) in enumerate(zip(ids(len(shapes)), shapes))}
    assert_matches_official(*make_submission(cases))


def test_largest_isic_size_matches_official(make_submission, make_blob):
    shape = (4499, 6748)
    table = assert_matches_official(*make_submission(
        {"ISIC_0000000": (make_blob(shape, seed=9), make_blob(shape, seed=9, scale=0.85))}))
    assert table[["tp", "fp", "fn", "tn"]].to_numpy().sum() == 4499 * 6748


def test_score_pair_equals_official_per_image(make_submission, make_blob):
    truth_dir, prediction_dir = make_submission(
        {"ISIC_0000042": (make_blob((64, 48), seed=5), make_blob((64, 48), seed=6))})
    name = "ISIC_0000042_segmentation.png"
    result = score_pair(truth_dir / name, prediction_dir / name)
    (_, expected), = official_scores(truth_dir, prediction_dir)[0]
    for metric in METRICS:
        assert result[metric] == pytest.approx(expected[metric], rel=0, abs=1e-9)
    assert sum(result[c] for c in ("tp", "fp", "fn", "tn")) == 64 * 48


def test_thread_count_does_not_change_numbers(make_submission, make_blob):
    cases = {image_id: (make_blob((40, 60), seed=i), make_blob((40, 60), seed=i + 50))
             for i, image_id in enumerate(ids(12))}
    truth_dir, prediction_dir = make_submission(cases)
    pd.testing.assert_frame_equal(score_submission(truth_dir, prediction_dir, workers=1),
                                  score_submission(truth_dir, prediction_dir, workers=3))


def test_fast_png_decoding_and_pillow_give_the_same_table(make_submission, make_blob, monkeypatch):
    """Masks are decoded by glmed.io.grey_png when possible; Pillow alone must agree exactly."""
    from glmed.metrics import isic

    cases = {image_id: (make_blob((300, 400), seed=i), make_blob((300, 400), seed=i + 50, scale=1.1))
             for i, image_id in enumerate(ids(6))}
    truth_dir, prediction_dir = make_submission(cases)
    calls = []
    fast = isic.decode_grey8_png
    monkeypatch.setattr(isic, "decode_grey8_png", lambda data: calls.append(fast(data)) or calls[-1])
    with_fast = score_submission(truth_dir, prediction_dir)
    assert len(calls) == 12 and all(pixels is not None for pixels in calls)
    monkeypatch.setattr(isic, "decode_grey8_png", lambda data: None)
    pd.testing.assert_frame_equal(with_fast, score_submission(truth_dir, prediction_dir))


def test_summary_puts_the_headline_first(make_submission, make_blob):
    cases = {image_id: (make_blob((30, 30), seed=i), make_blob((30, 30), seed=i + 9))
             for i, image_id in enumerate(ids(4))}
    table = score_submission(*make_submission(cases))
    summary = summarize(table)
    assert list(summary.columns)[0] == HEADLINE and summary.index.tolist() == ["mean"]
    assert summary.at["mean", "images"] == 4
    assert summary.at["mean", "dice"] == table["dice"].mean()


# --- file matching -------------------------------------------------------------------------------

def test_official_name_matching_by_digits(tmp_path, save, make_blob):
    masks = [make_blob((20, 24), seed=i) for i in range(3)]
    for image_id, mask in zip(ids(3), masks):
        save(tmp_path / "truth" / f"{image_id}_segmentation.png", mask)
    (tmp_path / "truth" / "ATTRIBUTION.txt").write_text("images from the ISIC archive")
    (tmp_path / "truth" / "LICENSE.txt").write_text("CC-BY-NC")
    save(tmp_path / "pred" / "ISIC_0000000_segmentation.png", masks[1])
    save(tmp_path / "pred" / "0000001.png", masks[1])
    save(tmp_path / "pred" / "my_ISIC_0000002_mask.PNG", masks[0])
    table = assert_matches_official(tmp_path / "truth", tmp_path / "pred")
    assert table["jaccard"].iloc[1] == 1.0


def test_attribute_truth_files_match_their_attribute(tmp_path, save, make_blob):
    for k, attribute in enumerate(["globules", "streaks"]):
        name = f"ISIC_0000000_attribute_{attribute}.png"
        save(tmp_path / "truth" / name, make_blob((20, 20), seed=k))
        save(tmp_path / "pred" / name, make_blob((20, 20), seed=k + 1))
    table = assert_matches_official(tmp_path / "truth", tmp_path / "pred")
    assert list(table.index) == ["ISIC_0000000", "ISIC_0000000"]


def test_extra_predictions_are_ignored_with_a_note(make_submission, make_blob):
    cases = {image_id: (make_blob((20, 20), seed=i), make_blob((20, 20), seed=i + 1))
             for i, image_id in enumerate(ids(2))}
    truth_dir, prediction_dir = make_submission(cases)
    (prediction_dir / "README.txt").write_text("my submission")
    (prediction_dir / "ISIC_0000099_segmentation.png").write_bytes(b"not scored")
    (prediction_dir / "drafts").mkdir()
    with pytest.warns(IgnoredPredictionsWarning, match="3 file") as record:
        table = assert_matches_official(truth_dir, prediction_dir)
    assert "README.txt" in str(record[0].message)
    assert table.attrs["ignored_predictions"] == ["ISIC_0000099_segmentation.png", "README.txt", "drafts"]


def test_missing_prediction_rejected(make_submission, make_blob):
    cases = {image_id: (make_blob((20, 20), seed=i),) * 2 for i, image_id in enumerate(ids(3))}
    truth_dir, prediction_dir = make_submission(cases)
    (prediction_dir / "ISIC_0000001_segmentation.png").unlink()
    error = assert_both_reject(truth_dir, prediction_dir, SubmissionError, "no prediction for ISIC_0000001")
    assert error.paths == (truth_dir / "ISIC_0000001_segmentation.png",)


def test_duplicate_predictions_rejected(make_submission, save, make_blob):
    mask = make_blob((20, 20), seed=0)
    truth_dir, prediction_dir = make_submission({"ISIC_0000000": (mask, mask)})
    save(prediction_dir / "ISIC_0000000_segmentation.jpg", mask)
    error = assert_both_reject(truth_dir, prediction_dir, SubmissionError,
                               "ISIC_0000000_segmentation.png", "ISIC_0000000_segmentation.jpg", "2 predictions")
    assert len(error.problems) == 1 and len(error.paths) == 2


def test_every_matching_problem_is_listed_at_once(make_submission, save, make_blob):
    cases = {image_id: (make_blob((20, 20), seed=i),) * 2 for i, image_id in enumerate(ids(4))}
    truth_dir, prediction_dir = make_submission(cases)
    (prediction_dir / "ISIC_0000000_segmentation.png").unlink()
    (prediction_dir / "ISIC_0000002_segmentation.png").unlink()
    save(prediction_dir / "ISIC_0000003_copy.png", cases["ISIC_0000003"][0])
    error = assert_both_reject(truth_dir, prediction_dir, SubmissionError)
    assert len(error.problems) == 3
    assert all(image_id in str(error) for image_id in ("ISIC_0000000", "ISIC_0000002", "ISIC_0000003"))


def test_wrong_size_rejected(tmp_path, save, make_blob):
    save(tmp_path / "t" / "ISIC_0000000_segmentation.png", make_blob((767, 1022), seed=0))
    save(tmp_path / "p" / "ISIC_0000000_segmentation.png", make_blob((768, 1024), seed=0))
    assert_both_reject(tmp_path / "t", tmp_path / "p", SubmissionError,
                       "ISIC_0000000_segmentation.png", "1024×768", "1022×767")


def test_folder_in_place_of_a_prediction_rejected(make_submission, make_blob):
    mask = make_blob((20, 20), seed=0)
    truth_dir, prediction_dir = make_submission({"ISIC_0000000": (mask, mask), "ISIC_0000001": (mask, mask)})
    (prediction_dir / "ISIC_0000001_segmentation.png").unlink()
    (prediction_dir / "ISIC_0000001_segmentation.png").mkdir()
    assert_both_reject(truth_dir, prediction_dir, SubmissionError, "ISIC_0000001_segmentation.png", "folder")


# --- bad files and folders --------------------------------------------------------------------------

def _corrupt(data: bytes) -> bytes:
    start = data.index(b"IDAT") + 6
    return data[:start] + b"\xff" * 20 + data[start + 20:]


BAD_FILES = {
    "corrupt PNG": (_corrupt, "broken data stream"),
    "truncated PNG": (lambda data: data[: len(data) // 2], "truncated"),
    "not an image": (lambda data: b"predicted lesion area: 1234 px\n", "cannot identify image file"),
    "empty file": (lambda data: b"", "cannot identify image file"),
}


@pytest.mark.parametrize("side", ["prediction", "truth"])
@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_undecodable_files_rejected_naming_the_file(make_submission, make_blob, side, kind):
    mask = make_blob((48, 64), seed=1)
    truth_dir, prediction_dir = make_submission({"ISIC_0000000": (mask, mask), "ISIC_0000001": (mask, mask)})
    damage, reason = BAD_FILES[kind]
    bad = (prediction_dir if side == "prediction" else truth_dir) / "ISIC_0000001_segmentation.png"
    bad.write_bytes(damage(bad.read_bytes()))
    error_type = SubmissionError if side == "prediction" else GroundTruthError
    error = assert_both_reject(truth_dir, prediction_dir, error_type, str(bad), reason, "cannot be decoded")
    assert error.paths == (bad,)
    assert "Traceback" not in str(error)


def test_stray_truth_file_is_a_clear_error_where_official_crashes(make_submission, make_blob):
    mask = make_blob((20, 20), seed=0)
    truth_dir, prediction_dir = make_submission({"ISIC_0000000": (mask, mask)})
    (truth_dir / "notes.txt").write_text("split B")
    with pytest.raises(Exception) as official:
        SegmentationScore.from_dir(truth_dir, prediction_dir)
    assert not isinstance(official.value, ScoreError)  # a crash, not one of its messages
    with pytest.raises(GroundTruthError, match="notes.txt.*not an ISIC ground-truth mask"):
        score_submission(truth_dir, prediction_dir)


@pytest.mark.parametrize("notice", [None, "LICENSE.txt"])
def test_truth_folder_without_masks_is_a_clear_error(tmp_path, notice):
    (tmp_path / "truth").mkdir()
    (tmp_path / "prediction").mkdir()
    if notice:
        (tmp_path / "truth" / notice).write_text("CC-BY-NC")
    assert_both_reject(tmp_path / "truth", tmp_path / "prediction", GroundTruthError,
                       "no ground-truth masks", str(tmp_path / "truth"))


@pytest.mark.parametrize("missing, error_type", [("truth", GroundTruthError), ("prediction", SubmissionError)])
def test_missing_folder_is_a_clear_error(make_submission, make_blob, missing, error_type):
    mask = make_blob((20, 20), seed=0)
    truth_dir, prediction_dir = make_submission({"ISIC_0000000": (mask, mask)})
    folder = truth_dir if missing == "truth" else prediction_dir
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    assert_both_reject(truth_dir, prediction_dir, error_type, str(folder), "cannot list")
