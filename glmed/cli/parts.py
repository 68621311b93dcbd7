"""Which share of a folder's slides this process takes: ``--part K/N``, or torchrun's ``RANK``/``WORLD_SIZE``.

A study's slides are spread over processes (several GPUs of a machine under ``torchrun
--nproc_per_node N``, or several machines each given ``--part K/N``) by their place in the
folder's sorted list: share ``K`` of ``N`` (1-based) holds slides ``K, K + N, K + 2N, ...``, so the
shares are disjoint, together hold every slide, and differ in size by one at most. Dealing the
slides out in turn, rather than in blocks, spreads a folder's runs of similar slides (one
patient's, one scanner's) over the processes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")

_PART = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_part(text: str) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)``.

    Raises:
        ValueError: naming ``--part``, unless ``1 <= K <= N``.
    """
    match = _PART.match(text)
    if match is None or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ValueError(f"--part must be K/N with 1 <= K <= N (the K-th of N shares), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def this_part(part: str | None, environ: Mapping[str, str] | None = None) -> tuple[tuple[int, int], str] | None:
    """This process's ``(K, N)`` and where it came from, or None when the run is not split.

    ``part`` (``--part``) wins; otherwise torchrun's ``RANK`` and ``WORLD_SIZE`` give share
    ``RANK + 1`` of ``WORLD_SIZE`` when there is more than one process.

    Raises:
        ValueError: a bad ``--part``, or ``RANK``/``WORLD_SIZE`` that are not a rank within a world.
    """
    if part is not None:
        return parse_part(part), "--part"
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
    except ValueError:
        rank, world = -1, 0
    if not 0 <= rank < world:
        raise ValueError(f"RANK={environ['RANK']!r} and WORLD_SIZE={environ['WORLD_SIZE']!r} (set by torchrun) "
                         "are not a rank within a world; unset them or give --part K/N")
    return ((rank + 1, world), "torchrun's RANK and WORLD_SIZE") if world > 1 else None


def share(items: Sequence[T], part: tuple[int, int]) -> list[T]:
    """Share ``K`` of ``N`` of ``items`` (in their order): items ``K - 1, K - 1 + N, ...`` (0-based)."""
    k, n = part
    return list(items[k - 1 :: n])
