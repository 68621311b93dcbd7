import pytest

from glmed.data.synthetic.slides import write_synthetic_slide
from glmed.io import open_image


@pytest.fixture
def fail_at_call():
    """A function making a model's local branch raise on its ``call``-th use, as a crash would."""

    def arm(model, monkeypatch, call):
        calls = []

        def local_features(*args, **kwargs):
            calls.append(1)
            if len(calls) == call:
                raise RuntimeError("device lost")
            return type(model).local_features(model, *args, **kwargs)

        monkeypatch.setattr(model, "local_features", local_features)

    return arm


READERS = {"tifffile": ("tiff", "slide.tif", "TiffReader"), "openslide": ("aperio", "slide.svs", "SlideReader")}
"""Each slide test runs on a generic tiled TIFF read with tifffile and on an Aperio SVS read with OpenSlide."""


@pytest.fixture(params=sorted(READERS))
def slide(request, tmp_path):
    """A generated H&E slide, 300×420, as a generic pyramidal TIFF (tifffile) or an Aperio SVS (OpenSlide)."""
    kind, name, reader = READERS[request.param]
    written = write_synthetic_slide(tmp_path / name, (300, 420), seed=4, kind=kind, tile=64)  # JPEG, as scanners write
    with open_image(written.path) as opened:  # the reader the test means, or the test proves nothing
        assert type(opened).__name__ == reader
        if kind == "aperio":
            assert opened.properties["openslide.vendor"] == "aperio"
    return written.path


@pytest.fixture(params=sorted(READERS))
def tissue_slide(request, tmp_path):
    """A generated H&E slide, 320×448 at 2 µm/px, about 30% tissue in pieces apart, read by tifffile or OpenSlide.

    At 2 µm/px its pieces are larger than the tissue detector's smallest (5000 µm²), so a good part of
    its patches hold tissue and another good part glass only.
    """
    kind, name, reader = READERS[request.param]
    written = write_synthetic_slide(tmp_path / name, (320, 448), seed=3, kind=kind, tile=64, mpp=2.0,
                                    tissue_fraction=0.3)
    with open_image(written.path) as opened:
        assert type(opened).__name__ == reader
    return written


@pytest.fixture
def count_reads():
    """A function recording every region a reader decodes, as ``((row0, col0, row1, col1), level)`` in level pixels.

    It wraps the reader's ``_read_level``, which every read goes through: patches (also those of a
    :class:`~glmed.io.region.RegionReader` over it), global views and the tissue detector's view.
    """

    def arm(reader, monkeypatch):
        reads = []
        read_level = reader._read_level

        def counted(level, box):
            reads.append((tuple(int(v) for v in box), level))
            return read_level(level, box)

        monkeypatch.setattr(reader, "_read_level", counted)
        return reads

    return arm
