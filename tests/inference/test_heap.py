"""The C heap's free pages go back to the OS (glibc's malloc_trim), which a long slide run needs."""

import sys

import numpy as np
import pytest

from glmed.inference.heap import _malloc_trim, release_free_heap
from tests.resident import resident_mb

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


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
    held = resident_mb("RssAnon")
    assert release_free_heap()
    released = held - resident_mb("RssAnon")
    assert released > 100, f"only {released:.0f} MB of ~190 MB freed went back to the OS"
    assert all(piece.sum() == 1 << 10 for piece in kept)  # live memory untouched
