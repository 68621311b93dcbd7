"""glmed.io.mapped and its users: a memory-mapped mask read whole without staying resident."""

import sys

import numpy as np
import pytest

from glmed.io.mapped import mapping_of, release_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def _rss_file_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile in /proc/self/status")


def test_the_mapping_is_found_through_views_and_memory_has_none(tmp_path):
    mask = np.memmap(tmp_path / "m", dtype=np.uint8, mode="w+", shape=(64, 32))
    assert mapping_of(mask) is not None
    assert mapping_of(np.asarray(mask)[::2, 3:][..., None]) is mapping_of(mask)
    assert mapping_of(np.zeros((4, 4))) is None
    release_pages(np.zeros((4, 4)))  # nothing to release: no error


def test_released_pages_leave_the_resident_set_and_keep_their_data(tmp_path):
    mask = np.memmap(tmp_path / "m", dtype=np.uint8, mode="w+", shape=(4096, 16384))  # 64 MB
    before = _rss_file_mb()
    mask[:] = np.arange(16384, dtype=np.uint8)  # every page written
    assert _rss_file_mb() - before > 48
    release_pages(mask[::7])
    assert _rss_file_mb() - before < 8
    assert (mask[1234] == np.arange(16384, dtype=np.uint8)).all()  # written data kept (page cache, file)


def test_a_mapped_masks_pyramid_equals_the_in_memory_one_and_is_not_kept_resident(tmp_path, monkeypatch):
    import glmed.io.writers as writers

    rng = np.random.default_rng(0)
    image = rng.integers(0, 3, (3000, 5000), dtype=np.uint8)
    mapped = np.memmap(tmp_path / "m", dtype=np.uint8, mode="w+", shape=image.shape)
    mapped[:] = image
    mapped.flush()
    release_pages(mapped)
    monkeypatch.setattr(writers, "IN_MEMORY_LEVEL_BYTES", 1 << 20)  # levels of ≤1 MB copied: from level 2 here
    monkeypatch.setattr(writers, "RELEASE_BYTES", 1 << 20)  # in bands of 1 MB
    before = _rss_file_mb()
    levels = writers.pyramid(mapped, tile=128, resampling="nearest")
    assert _rss_file_mb() - before < 6  # the 15 MB file was read for level 2 and let go band by band
    expected = writers.pyramid(image, tile=128, resampling="nearest")
    assert len(levels) == len(expected) == 7
    for level, want in zip(levels, expected, strict=True):
        np.testing.assert_array_equal(level, want)
    assert mapping_of(levels[1]) is not None and mapping_of(levels[2]) is None  # level 2 (~0.9 MB) in memory


def test_writing_a_mapped_mask_as_a_pyramid_does_not_keep_it_resident(tmp_path, monkeypatch):
    import threading
    import time

    import tifffile

    import glmed.io.writers as writers
    from glmed.io.writers import write_pyramidal_tiff

    # scaled down with the file: levels of ≤4 MB in memory (from level 2), bands of 4 MB
    monkeypatch.setattr(writers, "IN_MEMORY_LEVEL_BYTES", 4 << 20)
    monkeypatch.setattr(writers, "RELEASE_BYTES", 4 << 20)

    mapped = np.memmap(tmp_path / "m", dtype=np.uint8, mode="w+", shape=(6000, 8000))  # 48 MB
    mapped[::2] = 1
    mapped.flush()
    release_pages(mapped)
    before, peak, done = _rss_file_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_file_mb() - before)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        write_pyramidal_tiff(tmp_path / "mask.tif", mapped, tile=256, compression=None, resampling="nearest")
    finally:
        done.set()
        sampler.join()
    # a row of level-1 tiles spans 512 rows (4 MB); as views, the deep levels would each map the whole 48 MB
    assert peak[0] < 16
    with tifffile.TiffFile(tmp_path / "mask.tif") as written:
        np.testing.assert_array_equal(written.pages[3].asarray(), np.asarray(mapped)[::8, ::8])


def test_a_wide_masks_strided_levels_are_let_go_tile_by_tile(tmp_path, monkeypatch):
    """A tile of a level taken every 4th pixel touches 4 × tile rows of the file: a row of such tiles, all of it."""
    import threading
    import time

    import tifffile

    import glmed.io.writers as writers
    from glmed.io.writers import write_pyramidal_tiff

    monkeypatch.setattr(writers, "IN_MEMORY_LEVEL_BYTES", 1 << 20)  # levels 1 and 2 stay strided views
    monkeypatch.setattr(writers, "RELEASE_BYTES", 4 << 20)  # level 3 copied in bands of 4 MB
    mapped = np.memmap(tmp_path / "m", dtype=np.uint8, mode="w+", shape=(1024, 65536))  # 64 MB, 16 pages a row
    mapped[:, ::3] = 1
    mapped.flush()
    release_pages(mapped)
    before, peak, done = _rss_file_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_file_mb() - before)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        write_pyramidal_tiff(tmp_path / "mask.tif", mapped, tile=256, compression=None, resampling="nearest")
    finally:
        done.set()
        sampler.join()
    # a level-2 tile: 1024 file rows, one page of each (4 MB); its row of tiles: the whole 64 MB file
    assert peak[0] < 16
    with tifffile.TiffFile(tmp_path / "mask.tif") as written:
        np.testing.assert_array_equal(written.pages[2].asarray(), np.asarray(mapped)[::4, ::4])


def test_counting_a_mapped_masks_foreground_does_not_keep_it_resident(tmp_path):
    from glmed.inference.notes import foreground_fraction
    from glmed.inference.slide_outputs import class_pixel_counts

    mapped = np.memmap(tmp_path / "m", dtype=np.uint8, mode="w+", shape=(4096, 16384))  # 64 MB
    mapped[:1024] = 1
    mapped.flush()
    release_pages(mapped)
    before = _rss_file_mb()
    assert foreground_fraction(mapped) == 0.25
    assert _rss_file_mb() - before < 24  # a band or two, not the 64 MB file
    assert class_pixel_counts(mapped, 2).tolist() == [3072 * 16384, 1024 * 16384]
    assert _rss_file_mb() - before < 24


def test_a_copy_on_write_mapping_is_never_released(tmp_path):
    """Mode "c" maps the file privately: releasing would drop the changes and show the file's bytes."""
    np.zeros((256, 4096), np.uint8).tofile(tmp_path / "m")
    private = np.memmap(tmp_path / "m", dtype=np.uint8, mode="c", shape=(256, 4096))
    private[:] = 5
    assert mapping_of(private) is None
    release_pages(private)
    assert (private == 5).all()
    for mode in ("r", "r+"):
        assert mapping_of(np.memmap(tmp_path / "m", dtype=np.uint8, mode=mode, shape=(256, 4096))) is not None


def test_row_bands_cover_every_row_once_within_the_budget():
    from glmed.io.mapped import row_bands

    image = np.zeros((1000, 300, 3), np.uint8)  # 900 bytes a row
    bands = list(row_bands(image, 9000, multiple=4))
    assert all((band.stop - band.start) % 4 == 0 and (band.stop - band.start) * 900 <= 9000 for band in bands)
    assert np.concatenate([np.arange(1000)[band] for band in bands]).tolist() == list(range(1000))
    assert len(list(row_bands(image, 1, multiple=4))) == 250  # never fewer rows than the multiple
    assert len(list(row_bands(image[..., 0], 300 * 8 * 10, bytes_per_pixel=8))) == 100
