"""This process's memory, read from ``/proc/self/status`` (Linux): for tests that bound what a pass keeps resident."""

from __future__ import annotations

from collections.abc import Callable


def resident_mb(field: str) -> float:
    """``RssAnon``, ``RssFile`` or ``VmRSS`` of this process now, in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def peak_resident_mb_added(field: str, work: Callable[[], object], every_s: float = 0.001) -> float:
    """The most MB of ``field`` above its value at the start while ``work()`` runs, sampled on a thread."""
    import threading
    import time

    before, peak, done = resident_mb(field), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_mb(field) - before)
            time.sleep(every_s)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return peak[0]
