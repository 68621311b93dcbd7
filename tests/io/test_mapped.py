"""glmed.io.mapped and its users: a memory-mapped mask read whole without staying resident."""

import sys

import numpy as np
import pytest

from glmed.io.mapped import mapping_of, release_pages
from tests.resident import peak_resident_mb_added, resident_mb

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def test_the_mapping_is_found_through_views_and_memory_has_none(tmp_path):
    mask = np.memmap(tmp_path / "m", dtype=np.uint8, mode="w+", shape=(64, 32))
    assert mapping_of(mask) is not None
    assert mapping_of(np.asarray(mask)[::2, 3:][..., None]) is mapping_of(mask)
    assert mapping_of(np.zeros((4, 4))) is None
    release_pages(np.zeros((4, 4)))  # nothing to release: no error


def test_released_pages_leave_the_resident_set_and_keep_their_data(tmp_path):
    mask = np.memmap(tmp_path / "m", dtype=np.uint8, mode="w+", shape=(4096, 16384))  # 64 MB
    before = resident_mb("RssFile")
    mask[:] = np.arange(16384, dtype=np.uint8)  # every page written
    assert resident_mb("RssFile") - before > 48
    release_pages(mask[::7])
    assert resident_mb("RssFile") - before < 8
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
    before = resident_mb("RssFile")
    levels = writers.pyramid(mapped, tile=128, resampling="nearest")
    assert resident_mb("RssFile") - before < 6  # the 15 MB file was read for level 2 and let go band by band
    expected = writers.pyramid(image, tile=128, resampling="nearest")
    assert len(levels) == len(expected) == 7
    for level, want in zip(levels, expected, strict=True):
        np.testing.assert_array_equal(level, want)
    assert mapping_of(levels[1]) is not None and mapping_of(levels[2]) is None  # level 2 (~0.9 MB) in memory


@pytest.mark.parametrize(("shape", "in_memory_mb", "checked_level"), [
    # 48 MB: levels of <=4 MB copied into memory (from level 2); a row of level-1 tiles spans 512
    # rows (4 MB); as views, the deep levels would each map the whole file for one tile
    ((6000, 8000), 4, 3),
    # 64 MB, 16 pages a row: levels 1 and 2 stay strided views; a level-2 tile spans 1024 rows of
    # the file, each mapping 64-128 kB around the byte read (fault-around), so a row of such tiles
    # maps all 64 MB unless the tile's pages are released as it is copied
    ((1024, 65536), 1, 2),
], ids=["tall", "wide"])
def test_writing_a_mapped_mask_as_a_pyramid_does_not_keep_it_resident(
    tmp_path, monkeypatch, shape, in_memory_mb, checked_level
):
    import tifffile

    import glmed.io.writers as writers
    from glmed.io.writers import write_pyramidal_tiff

    monkeypatch.setattr(writers, "IN_MEMORY_LEVEL_BYTES", in_memory_mb << 20)
    monkeypatch.setattr(writers, "RELEASE_BYTES", 4 << 20)  # the copied level read in bands of 4 MB
    mapped = np.memmap(tmp_path / "m", dtype=np.uint8, mode="w+", shape=shape)
    mapped[::2, ::3] = 1
    mapped.flush()
    release_pages(mapped)
    peak = peak_resident_mb_added("RssFile", lambda: write_pyramidal_tiff(
        tmp_path / "mask.tif", mapped, tile=256, compression=None, resampling="nearest"))
    assert peak < 16
    stride = 2**checked_level
    with tifffile.TiffFile(tmp_path / "mask.tif") as written:
        np.testing.assert_array_equal(written.pages[checked_level].asarray(), np.asarray(mapped)[::stride, ::stride])


def test_counting_a_mapped_masks_foreground_does_not_keep_it_resident(tmp_path):
    from glmed.inference.notes import foreground_fraction
    from glmed.inference.slide_outputs import class_pixel_counts

    mapped = np.memmap(tmp_path / "m", dtype=np.uint8, mode="w+", shape=(4096, 16384))  # 64 MB
    mapped[:1024] = 1
    mapped.flush()
    release_pages(mapped)
    before = resident_mb("RssFile")
    assert foreground_fraction(mapped) == 0.25
    assert resident_mb("RssFile") - before < 24  # a band or two, not the 64 MB file
    assert class_pixel_counts(mapped, 2).tolist() == [3072 * 16384, 1024 * 16384]
    assert resident_mb("RssFile") - before < 24


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
