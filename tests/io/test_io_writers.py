"""Writers: atomic replacement, ISIC-format mask PNGs, pyramidal TIFFs that OpenSlide and tifffile both read."""

import os

import numpy as np
import pytest
from PIL import Image

from glmed.io import atomic_path, open_image, write_mask_png, write_pyramidal_tiff
from glmed.io.writers import pyramid


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            assert os.path.dirname(temporary) == str(tmp_path) and temporary.endswith(".csv")
            open(temporary, "w").write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["scores.csv"]
    with atomic_path(target) as temporary:
        open(temporary, "w").write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["scores.csv"]


@pytest.mark.parametrize(
    "mask", [np.eye(6, dtype=bool), np.eye(6, dtype=np.uint8), np.eye(6, dtype=np.int64) * 255, np.eye(6)[..., None]]
)
def test_mask_png_is_8bit_single_channel_0_255(tmp_path, mask):
    path = tmp_path / "ISIC_0000000_segmentation.png"
    write_mask_png(path, mask)
    with Image.open(path) as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), np.eye(6, dtype=np.uint8) * 255)


def test_mask_png_refuses_other_values(tmp_path):
    with pytest.raises(ValueError, match=r"m.png: .*found values \[0, 1, 2\]"):
        write_mask_png(tmp_path / "m.png", np.array([[0, 1], [2, 2]]))
    assert not (tmp_path / "m.png").exists()


def test_pyramid_halves_with_ceil_and_area_or_nearest():
    image = np.arange(5 * 7, dtype=np.uint8).reshape(5, 7)
    levels = pyramid(image, levels=3)
    assert [level.shape for level in levels] == [(5, 7, 1), (3, 4, 1), (2, 2, 1)]
    assert levels[1][0, 0, 0] == np.rint(image[:2, :2].mean()) and levels[1][2, 3, 0] == image[4, 6]
    nearest = pyramid(image, levels=2, resampling="nearest")
    np.testing.assert_array_equal(nearest[1][..., 0], image[::2, ::2])
    assert len(pyramid(np.zeros((1000, 300)), tile=256)) == 3


@pytest.mark.parametrize("compression", ["jpeg", "zlib", None])
def test_pyramidal_tiff_round_trip_through_open_image(tmp_path, compression):
    rows, cols = np.indices((300, 520))
    image = np.stack([rows * 255 // 300, cols * 255 // 520, (rows + cols) % 256], axis=2).astype(np.uint8)
    path = tmp_path / "out.tif"
    write_pyramidal_tiff(path, image, levels=2, tile=128, compression=compression)
    for backend in ("tifffile", "openslide"):
        reader = open_image(path, backend=backend)
        assert reader.level_sizes == ((300, 520), (150, 260))
        error = np.abs(reader.read((0, 0, 300, 520)).astype(int) - image)
        assert error.max() == 0 if compression != "jpeg" else error.mean() < 3


def test_pyramidal_tiff_of_a_mask_keeps_classes(tmp_path):
    mask = (np.indices((200, 300)).sum(axis=0) % 7).astype(np.uint8)
    path = tmp_path / "mask.tif"
    write_pyramidal_tiff(path, mask, levels=2, tile=64, compression="zlib", resampling="nearest")
    reader = open_image(path)
    assert reader.channels == 1
    np.testing.assert_array_equal(reader.read((0, 0, 200, 300), level=1)[..., 0], mask[::2, ::2])


def test_pyramidal_tiff_refuses_what_jpeg_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="x.tif: JPEG holds"):
        write_pyramidal_tiff(tmp_path / "x.tif", np.zeros((64, 64), np.uint16))
    with pytest.raises(ValueError, match="multiple of 16"):
        write_pyramidal_tiff(tmp_path / "x.tif", np.zeros((64, 64), np.uint8), tile=100)
    assert not (tmp_path / "x.tif").exists()


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from glmed.io.writers import write_mask_png

    target = tmp_path / "m.png"
    write_mask_png(target, np.zeros((4, 4), dtype=np.uint8))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_pyramidal_tiff_streams_a_memory_mapped_mask_and_counts_its_tiles(tmp_path, monkeypatch):
    import glmed.progress

    bars = []

    class RecordingBar:
        def __init__(self, total, **_):
            self.total, self.count, self.closed = total, 0, False
            bars.append(self)

        def update(self, n=1):
            self.count += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(glmed.progress, "progress_bar", RecordingBar)
    mask = np.memmap(tmp_path / "mask.raw", dtype=np.uint8, mode="w+", shape=(300, 200))
    mask[:] = (np.arange(300)[:, None] // 7 + np.arange(200)[None, :] // 9) % 3
    write_pyramidal_tiff(tmp_path / "mask.tif", mask, tile=64, compression="zlib", resampling="nearest", progress=True)
    with open_image(tmp_path / "mask.tif") as reader:
        assert reader.level_sizes == ((300, 200), (150, 100), (75, 50), (38, 25))
        np.testing.assert_array_equal(reader.read((0, 0, 300, 200))[..., 0], mask)
        np.testing.assert_array_equal(reader.read((0, 0, 300, 200), level=2)[..., 0], mask[::4, ::4])
    [bar] = bars
    assert bar.total == bar.count == 5 * 4 + 3 * 2 + 2 * 1 + 1 and bar.closed
