"""The coordinate conventions of glmed, said once.

Every position and size in glmed is in level-0 (full-resolution) pixels and ordered
``(row, col)`` / ``(height, width)``, as MONAI orders them. A box is
``(row0, col0, row1, col1)`` with the end excluded, so its height is ``row1 - row0``.
Libraries that want ``(x, y)`` / ``(width, height)`` (OpenSlide, PIL) are converted at
the call site, never elsewhere.
"""

from __future__ import annotations

Size = tuple[int, int]
"""``(height, width)`` in pixels."""

Point = tuple[int, int]
"""``(row, col)`` in pixels."""

RUN_RECORD_NAME = ".glmed-run.json"
"""How the files that record which model and options made each mask of an output folder end
(``.NAME.glmed-run.json``, :mod:`glmed.inference.provenance`); folder scans (the ISIC scorer's
among them) skip them without a word."""

RUN_SUMMARY_NAME = "summary.csv"
"""The line-per-image summary a folder run of ``glmed predict`` writes into its output folder
(:mod:`glmed.cli.summary`); the ISIC scorer skips it without a word."""

Box = tuple[int, int, int, int]
"""``(row0, col0, row1, col1)`` in pixels, end-exclusive."""

FloatBox = tuple[float, float, float, float]
"""A box in continuous coordinates, e.g. on a feature map or as fractions of an image."""
