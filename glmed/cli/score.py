"""``glmed score TRUTH_DIR PREDICTION_DIR``: score an ISIC 2018 Task 1 submission folder.

Prints the summary with the headline (mean thresholded Jaccard) first, optionally writes the
per-image table as CSV, and exits with status 1 and the reason when the submission is rejected.
Heavy imports happen inside :func:`run` so that ``glmed --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: Exit status for a rejected submission or an unusable ground-truth folder.
EXIT_REJECTED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``score`` subcommand's arguments."""
    parser.add_argument("truth_dir", type=Path, metavar="TRUTH_DIR",
                        help="ground-truth masks in the ISIC 2018 layout (ISIC_0000000_segmentation.png)")
    parser.add_argument("prediction_dir", type=Path, metavar="PREDICTION_DIR",
                        help="predicted masks, one per image, 8-bit greyscale with lesion = 255")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="write the per-image metrics and confusion counts to this CSV file")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as JSON (full float precision) instead of a table")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="decoding threads (default: the CPUs available)")


def _summary_text(summary: dict[str, float | int]) -> str:
    """The human-readable summary, headline first."""
    from glmed.metrics.isic import HEADLINE

    lines = [f"ISIC 2018 Task 1 score over {summary['images']} images",
             f"  {HEADLINE:<18} {summary[HEADLINE]:.6f}   <- headline (challenge ranking)"]
    lines += [f"  {name:<18} {value:.6f}" for name, value in summary.items()
              if name not in (HEADLINE, "images")]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Score the submission; returns the process exit status."""
    import json
    import warnings

    from glmed.io.writers import atomic_path
    from glmed.metrics.isic import (
        EmptyMaskWarning,
        HiddenFilesWarning,
        IgnoredPredictionsWarning,
        ScoringError,
        score_submission,
    )

    if args.workers is not None and args.workers < 1:
        print(f"glmed score: error: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return EXIT_REJECTED
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmptyMaskWarning)
        warnings.simplefilter("always", IgnoredPredictionsWarning)
        warnings.simplefilter("always", HiddenFilesWarning)
        try:
            per_image = score_submission(args.truth_dir, args.prediction_dir, workers=args.workers)
        except ScoringError as error:
            print(f"glmed score: error: {error}", file=sys.stderr)
            return EXIT_REJECTED
    for warning in caught:
        kind = "note" if issubclass(warning.category, HiddenFilesWarning) else "WARNING"
        print(f"glmed score: {kind}: {warning.message}", file=sys.stderr)

    summary = per_image.attrs["summary"]
    if args.json:
        print(json.dumps({**summary, "ignored_predictions": per_image.attrs["ignored_predictions"]},
                         indent=2))
    else:
        print(_summary_text(summary))
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.csv) as temporary:
            per_image.to_csv(temporary, float_format="%.17g")
        print(f"per-image table written to {args.csv}", file=sys.stderr)
    return 0
