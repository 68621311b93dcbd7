"""A whole-slide read never allocates the whole image: peak memory measured on large generated slides.

The slides are written from a handful of pre-encoded JPEG tiles (tifffile takes an
iterator of encoded tiles), so a 20000 x 20000 pyramid (1.2 GB decoded) costs a few MB
and a fraction of a second to write. Each measurement runs in a fresh interpreter and
reports both the Python-level peak (tracemalloc, which sees numpy's buffers) and the
growth of the process's peak resident size (which also sees OpenSlide's C buffers).
"""

import json
import subprocess
import sys
import textwrap

import imagecodecs
import numpy as np
import pytest
import tifffile

TILE = 256
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [230, 230, 230]], np.uint8)
MB = 2**20

PROBE = textwrap.dedent(
    """
    import json, resource, sys, tracemalloc
    from glmed.io import open_image
    path, backend, what = sys.argv[1:4]
    if what == "resized":
        import torch  # the final resize uses it: loaded before the baseline is taken
    reader = open_image(path, backend=backend)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    out = reader.read((5000, 7000, 7048, 9048)) if what == "region" else reader.resized((512, 512))
    traced = tracemalloc.get_traced_memory()[1]
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"shape": out.shape, "traced": traced, "rss_growth": grown * 1024,
                      "corner": out[0, 0].tolist(), "levels": len(reader.level_sizes)}))
    """
)


def _write_slide(path, side, levels):
    encoded = [imagecodecs.jpeg_encode(np.broadcast_to(c, (TILE, TILE, 3)).copy(), level=90) for c in COLOURS]

    def tiles(size):
        for row in range(-(-size // TILE)):
            for col in range(-(-size // TILE)):
                yield encoded[(row + col) % 4]

    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for level in range(levels):
            size = -(-side // 2**level)
            writer.write(tiles(size), shape=(size, size, 3), dtype=np.uint8, tile=(TILE, TILE), compression="jpeg",
                         photometric="rgb", subfiletype=1 if level else 0)
    return path


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    return {
        "pyramid": _write_slide(folder / "pyramid_20k.tif", 20000, levels=8),
        "flat": _write_slide(folder / "flat_16k.tif", 16000, levels=1),
    }


def _probe(path, backend, what):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), backend, what], check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_region_read_of_a_20k_slide_decodes_only_its_tiles(slides, backend):
    if backend == "openslide":
        pytest.importorskip("openslide")
    full = 20000 * 20000 * 3  # 1.2 GB
    result = _probe(slides["pyramid"], backend, "region")
    assert result["shape"] == [2048, 2048, 3] and result["levels"] == 8
    assert result["corner"] == pytest.approx(COLOURS[(5000 // TILE + 7000 // TILE) % 4].tolist(), abs=3)
    assert result["rss_growth"] < 128 * MB < full / 8, result
    if backend == "tifffile":
        assert result["traced"] < 48 * MB, result  # the 12 MB answer, and a few tiles


@pytest.mark.slow
def test_downsampled_view_of_a_slide_without_pyramid_is_streamed(slides):
    """The stripes come from the shared base class, so one backend shows it (OpenSlide takes 3x longer)."""
    full = 16000 * 16000 * 3  # 768 MB, one level only: every pixel must be read
    result = _probe(slides["flat"], "tifffile", "resized")
    assert result["shape"] == [512, 512, 3] and result["levels"] == 1
    assert result["corner"] == pytest.approx(COLOURS[0].tolist(), abs=3)  # inside the first tile
    assert result["rss_growth"] < full / 6, result  # < 128 MB
    assert result["traced"] < 64 * MB, result
