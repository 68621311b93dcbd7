"""Progress bars that suit where they are shown: redrawn on a terminal, plain lines in a log file.

A tqdm bar redraws itself by writing carriage returns and the new state many times a second; on a
terminal that is one line, but in a log file (``glmed predict ... 2> run.log``, a batch job's
output) every redraw stays, and a long run leaves thousands of them. :func:`progress_bar`
gives the usual bar on a terminal (and in a notebook), and elsewhere a bar that writes a plain
line at most every ``interval`` seconds, with no carriage returns or cursor movements, only for work
that lasts longer than that, and a last line when it ends.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import IO, Any

LOG_INTERVAL = 30.0
"""Seconds between two lines of a bar written to a file."""

_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
"""ANSI escape sequences (tqdm moves the cursor up and down for nested bars)."""


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: float | None = None,
    desc: str | None = None,
    unit: str = "it",
    leave: bool = False,
    file: IO[str] | None = None,
    interval: float = LOG_INTERVAL,
) -> Any:
    """A tqdm progress bar over ``iterable`` (or updated by hand up to ``total``).

    Args:
        iterable: what to iterate over; None for a bar advanced with ``update``.
        total: the number of steps, when ``iterable`` has no length.
        desc: the bar's label.
        unit: what one step is (``"image"``, ``"batch"``).
        leave: keep the finished bar on a terminal (off a terminal the last line always stays).
        file: where to write; ``sys.stderr`` by default.
        interval: off a terminal, seconds before the first line and between two lines.

    Returns:
        A ``tqdm`` instance: iterate over it, or call ``update``/``close``.
    """
    import tqdm.auto
    import tqdm.std

    stream = sys.stderr if file is None else file
    if _is_terminal(stream) or _is_notebook(stream):
        return tqdm.auto.tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream)
    return tqdm.std.tqdm(iterable, total=total, desc=desc, unit=unit, file=_PlainLines(stream), ascii=True,
                         dynamic_ncols=False, mininterval=interval, maxinterval=max(interval, 1.0), delay=interval,
                         leave=True)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _is_notebook(stream: Any) -> bool:
    """Whether ``stream`` is a Jupyter kernel's output, where tqdm draws a widget instead of text."""
    return type(stream).__module__.startswith("ipykernel")


class _PlainLines:
    """A text stream that turns tqdm's in-place redraws into whole lines: no carriage returns, no cursor moves."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        for piece in re.split(r"[\r\n]", _CONTROL.sub("", text)):
            line = piece.rstrip()
            if line:
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()
