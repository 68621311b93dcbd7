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
