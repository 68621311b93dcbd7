"""glmed.progress: a redrawn bar on a terminal, plain periodic lines in a log file."""

import io
import sys

import tqdm.auto

from glmed.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_plain_lines_without_carriage_returns():
    log = io.StringIO()
    for _ in progress_bar(range(4), desc="segmenting", unit="image", file=log, interval=0):
        inner = progress_bar(total=3, desc="patches", unit="batch", file=log, interval=0)  # a nested bar
        for _ in range(3):
            inner.update()
        inner.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert all(line.strip() == line and line for line in lines)
    assert lines[0].startswith("segmenting:   0%") and lines[-1].startswith("segmenting: 100%|##########| 4/4")
    assert any(line.startswith("patches: 100%") for line in lines)


def test_short_work_leaves_nothing_in_a_log_and_long_work_a_line_per_interval(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)  # the default stream is looked up at call time
    bar = progress_bar(total=1000, desc="epoch 1")
    for _ in range(1000):
        bar.update()
    bar.close()
    assert log.getvalue() == ""  # done within the interval: no line at all

    clock = iter(range(0, 10_000, 7))  # each look at the clock is 7 s later
    monkeypatch.setattr("tqdm.std.time", lambda: float(next(clock)))
    bar = progress_bar(total=20, desc="epoch 2", interval=30)
    for _ in range(20):
        bar.update()
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 2 <= len(lines) <= 10 and lines[-1].startswith("epoch 2: 100%")


def test_a_terminal_gets_the_usual_redrawn_bar(monkeypatch):
    made = []
    real = tqdm.auto.tqdm

    def recording(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", recording)
    terminal = Terminal()
    for _ in progress_bar(range(3), desc="segmenting", unit="image", file=terminal):
        pass
    assert made and made[0]["file"] is terminal and made[0]["leave"] is False
    assert "\r" in terminal.getvalue()
