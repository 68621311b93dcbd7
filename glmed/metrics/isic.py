"""ISIC 2018 Task 1 (lesion boundary segmentation) scoring, identical to the official scorer.

:func:`score_submission` scores a folder of predicted masks against a folder of ground-truth
masks and returns one row per image. The rules are those of the official
``isic-challenge-scoring`` 5.x package, so the numbers are the ones the challenge publishes:

* Ground truth: every entry of the truth folder except ``ATTRIBUTION.txt`` and ``LICENSE.txt``
  must have ``ISIC_<7 digits>`` in its name; entries are taken in sorted path order.
* Matching: a prediction belongs to a truth file when its name without the extension contains
  the truth's 7 digits (and, for a truth named ``..._attribute_<name>``, also ``<name>``). No
  candidate, or more than one, rejects the submission; predictions no truth file claims are
  ignored (with a warning).
* Decoding (Pillow): 1-bit images are converted to 8-bit; any other mode than 8-bit greyscale
  (``L``) is refused, which refuses RGB, RGBA, palette and 16-bit files, and a prediction must
  have exactly the truth's size. A greyscale JPEG is accepted.
* Foreground is a value above 128, on truth and prediction alike; the metrics and their
  conventions for empty masks are in :mod:`glmed.metrics.confusion`. The aggregate is the
  unweighted mean over images; the headline is the mean thresholded Jaccard.

Where glmed differs, it is to be clearer, never to give other numbers: every rejected input
raises :class:`SubmissionError` or :class:`GroundTruthError` naming all offending files at once,
missing and duplicate predictions together with undecodable or wrongly sized files (the official
scorer stops at the first, and crashes with a traceback on a stray truth file, an empty truth
folder, a folder in place of a prediction or a truncated image), and a mask that is not blank
but has no value above 128 (a 0/1 mask) raises an :class:`EmptyMaskWarning`, because it
silently scores as empty. Hidden entries (names starting with ``.``: ``.DS_Store``, macOS's
``._ISIC_0000000_segmentation.png`` copies, ``.ipynb_checkpoints``, glmed's own
``.glmed-run.json``) are left out of both folders, with a :class:`HiddenFilesWarning` naming
them; the official scorer refuses such a folder or crashes on it.

Speed: plain 8-bit greyscale PNGs are decoded by :mod:`glmed.io.grey_png` (zlib-ng and
NumPy, pixels identical to Pillow's; anything else is decoded by Pillow), pairs are decoded on a
thread pool, and counts come from Pillow's C histograms.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, UnidentifiedImageError

from glmed.conventions import RUN_SUMMARY_NAME
from glmed.io.grey_png import decode_grey8_png
from glmed.metrics.confusion import FOREGROUND_ABOVE, METRICS, BinaryCounts, binary_metrics

__all__ = [
    "HEADLINE",
    "EmptyMaskWarning",
    "GroundTruthError",
    "HiddenFilesWarning",
    "IgnoredPredictionsWarning",
    "ImagePair",
    "Matching",
    "ScoringProblem",
    "ScoringError",
    "SubmissionError",
    "match_submission",
    "score_pair",
    "score_submission",
    "summarize",
]

#: The challenge's ranking metric: the mean of this column.
HEADLINE = "threshold_jaccard"

_IMAGE_ID = re.compile(r"ISIC_[0-9]{7}")
_ATTRIBUTE = re.compile(r"attribute_([a-z_]+)")
_TRUTH_NOTICES = frozenset({"ATTRIBUTION.txt", "LICENSE.txt"})
_MAX_LISTED = 20
_MASK_FIX = "save masks as 8-bit greyscale PNG with 0 for background and 255 for lesion"


@dataclass(frozen=True)
class ScoringProblem:
    """Why one or more files make the inputs unscorable."""

    paths: tuple[Path, ...]
    reason: str

    def __str__(self) -> str:
        return f"{', '.join(str(p) for p in self.paths)}: {self.reason}"


class ScoringError(ValueError):
    """The inputs cannot be scored; ``problems`` lists every offending file and the reason."""

    def __init__(self, summary: str, problems: Sequence[ScoringProblem]) -> None:
        self.problems = tuple(problems)
        lines = [str(p) for p in self.problems[:_MAX_LISTED]]
        if len(self.problems) > _MAX_LISTED:
            lines.append(f"... and {len(self.problems) - _MAX_LISTED} more")
        super().__init__("\n  ".join([summary, *lines]))

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file named by the problems, in order."""
        return tuple(path for problem in self.problems for path in problem.paths)


class SubmissionError(ScoringError):
    """The prediction folder is rejected: missing, duplicate or unreadable masks, wrong sizes."""


class GroundTruthError(ScoringError):
    """The ground-truth folder is unusable: stray or unreadable files, or no masks at all."""


class EmptyMaskWarning(UserWarning):
    """A mask is not blank but has no value above 128 (a 0/1 mask), so it scores as empty."""


class IgnoredPredictionsWarning(UserWarning):
    """Files in the prediction folder that no ground-truth image claims; they are not scored."""


class HiddenFilesWarning(UserWarning):
    """Hidden entries (names starting with ``.``, such as ``.DS_Store``) left out of either folder."""


@dataclass(frozen=True)
class ImagePair:
    """A ground-truth file and the one prediction file that matches it."""

    image_id: str
    truth: Path
    prediction: Path


@dataclass(frozen=True)
class Matching:
    """The outcome of matching a prediction folder to a ground-truth folder.

    Attributes:
        pairs: each truth file with its prediction.
        ignored: prediction files no truth file claims (not scored).
        hidden: entries of either folder whose names start with ``.`` (left out of both).
    """

    pairs: tuple[ImagePair, ...]
    ignored: tuple[Path, ...]
    hidden: tuple[Path, ...] = ()


def _list_folder(folder: Path, error: type[ScoringError], role: str) -> tuple[list[Path], list[Path]]:
    """The visible and the hidden (dot-named) entries of ``folder``, or ``error`` naming it when unreadable."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise error(f"cannot list the {role} folder", [ScoringProblem((folder,), reason)]) from None
    return ([entry for entry in entries if not entry.name.startswith(".")],
            sorted(entry for entry in entries if entry.name.startswith(".")))


@dataclass
class _Matched:
    """Everything matching found, problems included, for one error that lists them all."""

    truth_dir: Path
    prediction_dir: Path
    truths: list[tuple[str, Path]]  # (image_id, path) in the official order
    outcome: list[ImagePair | ScoringProblem]  # one per truth file: its pair, or why there is none
    truth_problems: list[ScoringProblem]  # stray entries of the truth folder
    ignored: tuple[Path, ...]
    hidden: tuple[Path, ...]

    @property
    def pairs(self) -> tuple[ImagePair, ...]:
        return tuple(item for item in self.outcome if isinstance(item, ImagePair))

    def matching(self) -> Matching:
        return Matching(self.pairs, self.ignored, self.hidden)


def _truth_files(truth_dir: Path) -> tuple[list[tuple[str, Path]], list[ScoringProblem], list[Path]]:
    """The ground-truth masks, the stray entries of the folder, and its hidden entries.

    Returns ``(image_id, path)`` of every mask in the official (sorted) order, the stray entries
    as problems, and the hidden entries; raises when there is not a single mask.
    """
    visible, hidden = _list_folder(truth_dir, GroundTruthError, "ground-truth")
    found, problems = [], []
    for entry in sorted(visible):
        if entry.name in _TRUTH_NOTICES:
            continue
        match = _IMAGE_ID.search(entry.stem)
        if match is None:
            problems.append(ScoringProblem((entry,), "not an ISIC ground-truth mask (no ISIC_<7 digits> "
                                    "in its name); move it out of the ground-truth folder"))
        elif entry.is_dir():
            problems.append(ScoringProblem((entry,), "is a folder, not a ground-truth mask file"))
        else:
            found.append((match.group(0), entry))
    if problems and not found:
        raise GroundTruthError(f"the ground-truth folder {truth_dir} holds files that are not "
                               "ISIC masks", problems)
    if not found:
        raise GroundTruthError(f"no ground-truth masks in {truth_dir}", [ScoringProblem(
            (truth_dir,), "contains no ISIC_<7 digits> mask files; point at the folder of masks")])
    return found, problems, hidden


def _match(truth_dir: Path, prediction_dir: Path) -> _Matched:
    """Match by the official rule, collecting every problem instead of stopping at the first."""
    truths, truth_problems, hidden = _truth_files(truth_dir)
    predictions, hidden_predictions = _list_folder(prediction_dir, SubmissionError, "prediction")
    outcome: list[ImagePair | ScoringProblem] = []
    claimed: set[Path] = set()
    for image_id, truth in truths:
        attribute = _ATTRIBUTE.search(truth.stem)
        required = [image_id[len("ISIC_"):]] + ([attribute.group(1)] if attribute else [])
        candidates = [p for p in predictions if all(part in p.stem for part in required)]
        claimed.update(candidates)
        if not candidates:
            outcome.append(ScoringProblem((truth,), f"no prediction for {image_id}; expected a file "
                                    f"such as {prediction_dir / (image_id + '_segmentation.png')}"))
        elif len(candidates) > 1:
            outcome.append(ScoringProblem(tuple(sorted(candidates)), f"{len(candidates)} predictions "
                                    f"match {image_id}; keep exactly one"))
        elif candidates[0].is_dir():
            outcome.append(ScoringProblem((candidates[0],), "is a folder where the prediction mask "
                                    f"file for {image_id} should be"))
        else:
            outcome.append(ImagePair(image_id, truth, candidates[0]))
    # glmed predict's own summary.csv is no prediction, and no stray file either
    ignored = tuple(sorted(p for p in predictions if p not in claimed and p.name != RUN_SUMMARY_NAME))
    return _Matched(truth_dir, prediction_dir, truths, outcome, truth_problems, ignored,
                    tuple(hidden + hidden_predictions))


def _raise_problems(truth_dir: Path, prediction_dir: Path, truth_problems: Sequence[ScoringProblem],
                    prediction_problems: Sequence[ScoringProblem]) -> None:
    """One error listing every problem: :class:`GroundTruthError` when the truth side has any."""
    if truth_problems:
        also = f"; submission {prediction_dir} is rejected too" if prediction_problems else ""
        raise GroundTruthError(f"the ground-truth folder {truth_dir} cannot be used{also}",
                               [*truth_problems, *prediction_problems])
    if prediction_problems:
        raise SubmissionError(f"submission {prediction_dir} rejected", prediction_problems)


def match_submission(truth_dir: str | os.PathLike, prediction_dir: str | os.PathLike) -> Matching:
    """Pair every ground-truth mask with its prediction by the official matching rule.

    Hidden entries (names starting with ``.``) of either folder are left out and listed in
    ``Matching.hidden``.

    Raises:
        GroundTruthError: the truth folder is missing, empty or holds non-ISIC entries (any
            matching problems are listed with them).
        SubmissionError: a truth image has no prediction or several, or a folder stands where a
            prediction file should be; every such image is listed.
    """
    matched = _match(Path(truth_dir), Path(prediction_dir))
    _raise_problems(matched.truth_dir, matched.prediction_dir, matched.truth_problems,
                    [item for item in matched.outcome if isinstance(item, ScoringProblem)])
    return matched.matching()


class _BadMask(Exception):
    """Internal: a file that cannot be used as a mask, with the reason."""


def _open_mask(path: Path) -> Image.Image:
    """Decode a mask exactly as the official scorer does: 8-bit greyscale, 1-bit converted."""
    try:
        data = path.read_bytes()  # once: Pillow's checks and the fast decoder see the same bytes
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "PNG" and image.mode == "L":
                pixels = decode_grey8_png(data)
                if pixels is not None and pixels.shape == image.size[::-1]:
                    return Image.frombuffer("L", image.size, pixels, "raw", "L", 0, 1)
            image.load()
            if image.mode == "1":
                image = image.convert("L")
    # Pillow's format plugins signal malformed files with many exception types (OSError,
    # SyntaxError, ValueError, EOFError, struct.error, ...); each means "cannot decode this".
    except Exception as exc:  # noqa: BLE001
        # Pillow names the in-memory buffer it read from; the file is named by the caller.
        reason = "cannot identify image file" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise _BadMask(f"cannot be decoded as an image ({type(exc).__name__}: {reason}); "
                       f"{_MASK_FIX}") from None
    if image.mode != "L":
        raise _BadMask(f"is not a single-channel 8-bit greyscale image (Pillow mode "
                       f"{image.mode!r}); {_MASK_FIX}")
    return image


@dataclass
class _PairResult:
    """Counts of one pair, or the problems that prevent counting it."""

    counts: BinaryCounts | None = None
    truth_problems: list[ScoringProblem] = field(default_factory=list)
    prediction_problems: list[ScoringProblem] = field(default_factory=list)
    faint: list[tuple[Path, int]] = field(default_factory=list)  # (file, max value) read as empty


def _foreground(histogram: list[int]) -> int:
    return sum(histogram[FOREGROUND_ABOVE + 1:])


def _count_pair(truth_path: Path, prediction_path: Path) -> _PairResult:
    """Decode one truth/prediction pair and count TP/FP/FN/TN from Pillow histograms."""
    result = _PairResult()
    images = []
    for path, problems in ((truth_path, result.truth_problems),
                           (prediction_path, result.prediction_problems)):
        try:
            images.append(_open_mask(path))
        except _BadMask as bad:
            problems.append(ScoringProblem((path,), str(bad)))
    if len(images) < 2:
        return result
    truth, prediction = images
    if prediction.size != truth.size:
        (width, height), (truth_width, truth_height) = prediction.size, truth.size
        result.prediction_problems.append(ScoringProblem((prediction_path,), (
            f"is {width}×{height} (width×height) but its ground truth {truth_path.name} is "
            f"{truth_width}×{truth_height}; predictions must have the truth's exact size")))
        return result
    histograms = truth.histogram(), prediction.histogram()
    positives, predicted = (_foreground(h) for h in histograms)
    for path, histogram, fg in zip((truth_path, prediction_path), histograms, (positives, predicted), strict=True):
        top = max((value for value, n in enumerate(histogram) if n), default=0)
        if fg == 0 and top > 0:
            result.faint.append((path, top))
    if positives == 0 or predicted == 0:
        tp = 0
    elif not any(histograms[1][1:FOREGROUND_ABOVE + 1]):
        # Every non-zero prediction pixel is foreground: the prediction itself is the mask.
        tp = _foreground(truth.histogram(mask=prediction))
    elif not any(histograms[0][1:FOREGROUND_ABOVE + 1]):
        tp = _foreground(prediction.histogram(mask=truth))
    else:
        # min(truth, prediction) > 128 exactly where both are foreground.
        tp = _foreground(ImageChops.darker(truth, prediction).histogram())
    pixels = truth.size[0] * truth.size[1]
    result.counts = BinaryCounts(tp, predicted - tp, positives - tp,
                                 pixels - positives - predicted + tp)
    return result


def _examine(truth_path: Path, prediction_path: Path | None) -> _PairResult:
    """Count a pair, or decode a truth file alone when it has no usable prediction (to list its problems)."""
    if prediction_path is not None:
        return _count_pair(truth_path, prediction_path)
    result = _PairResult()
    try:
        _open_mask(truth_path)
    except _BadMask as bad:
        result.truth_problems.append(ScoringProblem((truth_path,), str(bad)))
    return result


def _check(results: Sequence[_PairResult], prediction_dir: str | os.PathLike) -> None:
    """Raise for every problem found while decoding; warn once about masks read as empty."""
    truth_problems = [p for r in results for p in r.truth_problems]
    if truth_problems:
        raise GroundTruthError("ground-truth masks cannot be used", truth_problems)
    prediction_problems = [p for r in results for p in r.prediction_problems]
    if prediction_problems:
        raise SubmissionError(f"submission {prediction_dir} rejected", prediction_problems)
    _warn_faint(results, stacklevel=4)


def _warn_faint(results: Sequence[_PairResult], stacklevel: int = 3) -> None:
    faint = [f"{path} (largest value {top})" for r in results for path, top in r.faint]
    if faint:
        listed = "\n  ".join(faint[:_MAX_LISTED] + (["..."] if len(faint) > _MAX_LISTED else []))
        warnings.warn(
            f"{len(faint)} mask(s) are NOT blank but have no value above 128, so they score as "
            f"EMPTY masks (a 0/1 mask loses its whole score); {_MASK_FIX}:\n  {listed}",
            EmptyMaskWarning, stacklevel=stacklevel)


def _warn_hidden(hidden: Sequence[Path]) -> None:
    """Name the hidden entries left out of the folders; glmed's own run records go unmentioned."""
    from glmed.conventions import RUN_RECORD_NAME as RECORD_NAME

    shown = [path for path in hidden if not path.name.endswith(RECORD_NAME)]
    if shown:
        names = ", ".join(str(path) for path in shown[:_MAX_LISTED]) + (", ..." if len(shown) > _MAX_LISTED else "")
        warnings.warn(f"ignored {len(shown)} hidden file(s) (names starting with '.'): {names}",
                      HiddenFilesWarning, stacklevel=3)


def _table(image_ids: Sequence[str], results: Sequence[_PairResult]) -> pd.DataFrame:
    """Per-image metrics and counts, indexed by ``image_id``."""
    counts = np.array([r.counts for r in results], dtype=np.int64).reshape(-1, 4)
    columns = binary_metrics(BinaryCounts(*counts.T))
    columns.update(zip(BinaryCounts._fields, counts.T, strict=True))
    return pd.DataFrame(columns, index=pd.Index(list(image_ids), name="image_id"))


def summarize(per_image: pd.DataFrame) -> pd.DataFrame:
    """The official aggregate: a one-row table (index ``mean``) of each metric's mean over images.

    The headline, the mean thresholded Jaccard, comes first; ``images`` is the number of rows.
    """
    order = [HEADLINE] + [m for m in METRICS if m != HEADLINE]
    means = per_image[order].mean(axis="index")
    summary = means.to_frame("mean").T
    summary["images"] = len(per_image)
    return summary


def score_pair(truth_file: str | os.PathLike, prediction_file: str | os.PathLike) -> dict[str, float]:
    """Score one prediction file against one ground-truth file (no name matching).

    Returns:
        The six metrics (floats) and the four counts ``tp, fp, fn, tn`` (ints).

    Raises:
        GroundTruthError / SubmissionError: a file cannot be decoded, is not 8-bit greyscale, or
            the sizes differ.
    """
    truth_file, prediction_file = Path(truth_file), Path(prediction_file)
    result = _count_pair(truth_file, prediction_file)
    _check([result], prediction_file)
    row = _table([truth_file.stem], [result]).iloc[0]
    return {name: (int(v) if name in BinaryCounts._fields else float(v)) for name, v in row.items()}


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _map(function, items: Iterable, workers: int) -> list:
    if workers <= 1:
        return [function(*item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda item: function(*item), items))


def score_submission(
    truth_dir: str | os.PathLike,
    prediction_dir: str | os.PathLike,
    *,
    workers: int | None = None,
) -> pd.DataFrame:
    """Score an ISIC 2018 Task 1 submission folder exactly as the official scorer would.

    Args:
        truth_dir: folder of ground-truth masks in the ISIC 2018 layout
            (``ISIC_0000000_segmentation.png``, optional ``ATTRIBUTION.txt``/``LICENSE.txt``).
        prediction_dir: folder of predicted masks, one per truth image, named with its id
            (``ISIC_0000000_segmentation.png``); other files are ignored with a warning.
        workers: decoding threads; defaults to the CPUs this process may use.

    Returns:
        One row per image (index ``image_id``, in sorted truth-file order) with columns
        ``jaccard, threshold_jaccard, dice, sensitivity, specificity, accuracy, tp, fp, fn, tn``.
        ``attrs["summary"]`` holds the means (as :func:`summarize` gives them),
        ``attrs["ignored_predictions"]`` the names of unscored prediction files and
        ``attrs["hidden_files"]`` the hidden entries (``.DS_Store``, ...) left out of either folder.

    Raises:
        SubmissionError: the official scorer would reject the submission; lists every bad file:
            missing and duplicate predictions, undecodable files and wrong sizes, all at once.
        GroundTruthError: the ground-truth folder cannot be scored against (any submission
            problems are listed with its own).

    Warns:
        EmptyMaskWarning: masks that are not blank but read as empty (0/1 masks).
        IgnoredPredictionsWarning: prediction files that no truth image claims.
        HiddenFilesWarning: hidden entries (``.DS_Store``, ...) left out of either folder.
    """
    matched = _match(Path(truth_dir), Path(prediction_dir))
    # Every file that exists is decoded even when some predictions are missing, so that one error
    # lists every problem: missing and duplicate files, undecodable ones and wrong sizes.
    tasks = [(truth, item.prediction if isinstance(item, ImagePair) else None)
             for item, (_, truth) in zip(matched.outcome, matched.truths, strict=True)]
    outcomes = _map(_examine, tasks, workers or _usable_cpus())
    truth_problems = list(matched.truth_problems) + [p for r in outcomes for p in r.truth_problems]
    prediction_problems: list[ScoringProblem] = []
    for item, result in zip(matched.outcome, outcomes, strict=True):  # in truth order
        prediction_problems += [item] if isinstance(item, ScoringProblem) else result.prediction_problems
    _raise_problems(matched.truth_dir, matched.prediction_dir, truth_problems, prediction_problems)
    if matched.ignored:
        names = ", ".join(p.name for p in matched.ignored[:_MAX_LISTED])
        more = ", ..." if len(matched.ignored) > _MAX_LISTED else ""
        warnings.warn(f"{len(matched.ignored)} file(s) in {prediction_dir} match no ground-truth "
                      f"image and are not scored (as the official scorer does): {names}{more}",
                      IgnoredPredictionsWarning, stacklevel=2)
    _warn_hidden(matched.hidden)
    _warn_faint(outcomes)
    table = _table([p.image_id for p in matched.pairs], outcomes)
    summary = summarize(table).iloc[0]
    table.attrs["summary"] = {**summary[list(summary.index[:-1])].astype(float).to_dict(),
                              "images": len(table)}
    table.attrs["ignored_predictions"] = [p.name for p in matched.ignored]
    table.attrs["hidden_files"] = [str(p) for p in matched.hidden]
    return table
