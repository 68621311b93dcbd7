"""The C heap's free pages go back to the OS (glibc's malloc_trim), which a long slide run needs."""

import numpy as np

from glmed.inference.heap import _malloc_trim, release_free_heap


def _rss_anon_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def test_freed_memory_held_between_live_pieces_leaves_the_resident_set():
    assert _malloc_trim() is not None  # Linux with glibc, as on every machine this project runs on
    release_free_heap()
    # 3000 pieces of 64 kB (under glibc's mmap threshold: they come from the heap), each followed
    # by a small piece that stays: freeing the large ones leaves 190 MB of holes malloc keeps
    large, kept = [], []
    for _ in range(3000):
        large.append(np.ones(64 << 10, dtype=np.uint8))
        kept.append(np.ones(1 << 10, dtype=np.uint8))
    del large
    held = _rss_anon_mb()
    assert release_free_heap()
    released = held - _rss_anon_mb()
    assert released > 100, f"only {released:.0f} MB of ~190 MB freed went back to the OS"
    assert all(piece.sum() == 1 << 10 for piece in kept)  # live memory untouched
