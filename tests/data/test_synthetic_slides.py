"""Generated slides: Aperio SVS and generic TIFF pyramids that OpenSlide and tifffile read as written."""

import numpy as np
import pytest
import tifffile

from glmed.data.synthetic.slides import make_tissue_scene, write_synthetic_slide
from glmed.io import open_image
from glmed.io.resolution import microns_per_pixel
from glmed.io.tiff_reader import TiffReader

openslide = pytest.importorskip("openslide")

SIZE = (768, 1024)
EXPECTED_LEVELS = {"aperio": ((768, 1024), (192, 256), (48, 64)), "tiff": ((768, 1024), (384, 512), (192, 256))}


@pytest.fixture(scope="module", params=["aperio", "tiff"])
def lossless(request, tmp_path_factory):
    kind = request.param
    name = "slide.svs" if kind == "aperio" else "slide.tif"
    levels = 3
    path = tmp_path_factory.mktemp(kind) / name
    return write_synthetic_slide(path, SIZE, kind=kind, seed=3, mpp=0.5, tile=128, levels=levels, compression="zlib")


def test_openslide_sees_the_vendor_resolution_and_levels(lossless):
    slide = openslide.OpenSlide(str(lossless.path))
    properties = slide.properties
    assert properties["openslide.vendor"] == lossless.vendor == {"aperio": "aperio", "tiff": "generic-tiff"}[
        lossless.kind
    ]
    assert float(properties["openslide.mpp-x"]) == float(properties["openslide.mpp-y"]) == 0.5
    assert lossless.level_sizes == EXPECTED_LEVELS[lossless.kind]
    assert tuple((h, w) for w, h in slide.level_dimensions) == lossless.level_sizes
    if lossless.kind == "aperio":
        assert properties["aperio.AppMag"] == "20" and properties["openslide.objective-power"] == "20"
        assert set(slide.associated_images) == {"thumbnail", "label", "macro"}
    slide.close()


def test_both_readers_return_the_pixels_written_at_every_level(lossless):
    with open_image(lossless.path, backend="openslide") as slide, TiffReader(lossless.path) as tiff:
        assert slide.level_sizes == tiff.level_sizes == lossless.level_sizes
        assert microns_per_pixel(slide) == microns_per_pixel(tiff) == (0.5, 0.5)
        for level in range(len(lossless.level_sizes)):
            expected = lossless.render_level(level)
            np.testing.assert_array_equal(slide.read((0, 0, *SIZE), level), expected, err_msg=f"openslide @ {level}")
            np.testing.assert_array_equal(tiff.read((0, 0, *SIZE), level), expected, err_msg=f"tifffile @ {level}")
        box = (130, 260, 420, 900)
        r0, c0, r1, c1 = slide.level_box(box, 1)
        np.testing.assert_array_equal(slide.read(box, 1), lossless.render_level(1, (r0, c0, r1, c1)))


def test_svs_name_opens_with_openslide(lossless):
    from glmed.io.slide_reader import SlideReader

    reader = open_image(lossless.path)
    assert isinstance(reader, SlideReader if lossless.kind == "aperio" else TiffReader)
    reader.close()


def test_tifffile_reads_the_aperio_layout_as_one_series_with_levels(lossless):
    with tifffile.TiffFile(lossless.path) as tiff:
        if lossless.kind == "aperio":
            assert tiff.is_svs
            assert [series.name for series in tiff.series] == ["Baseline", "Thumbnail", "Label", "Macro"]
            assert tiff.pages.first.description.startswith("Aperio Image Library")
        assert len(tiff.series[0].levels) == 3


def test_jpeg_slides_are_close_to_the_scene(tmp_path):
    slide = write_synthetic_slide(tmp_path / "jpeg.svs", (512, 768), seed=1, tile=128)
    with open_image(slide.path) as reader:
        for level in range(len(slide.level_sizes)):
            difference = np.abs(reader.read((0, 0, 512, 768), level).astype(int) - slide.render_level(level))
            assert difference.mean() < 6, level


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.6])
def test_tissue_fraction_is_the_one_asked_for(fraction):
    scene = make_tissue_scene((1200, 1600), seed=4, tissue_fraction=fraction, pieces=4)
    assert scene.tissue_fraction() == pytest.approx(fraction, abs=0.01)


def test_the_written_tissue_fraction_is_counted_on_level_0(tmp_path):
    slide = write_synthetic_slide(tmp_path / "count.tif", (300, 400), kind="tiff", tissue_fraction=0.25, tile=64)
    assert slide.tissue_fraction == pytest.approx(slide.scene.tissue((0, 0, 300, 400)).mean())
    assert slide.tissue_fraction == pytest.approx(0.25, abs=0.02)


def test_regions_render_the_same_alone_or_within_the_whole():
    scene = make_tissue_scene((500, 700), seed=2)
    whole = scene.render()
    np.testing.assert_array_equal(scene.render((123, 77, 301, 650)), whole[123:301, 77:650])
    assert whole.shape == (500, 700, 3)
    again = make_tissue_scene((500, 700), seed=2)
    np.testing.assert_array_equal(again.render(), whole)
    assert not np.array_equal(make_tissue_scene((500, 700), seed=5).render(), whole)


def test_tissue_looks_like_h_and_e_on_glass():
    scene = make_tissue_scene((400, 400), seed=0, tissue_fraction=0.4)
    pixels, tissue = scene.render().astype(int), scene.tissue()
    glass, stained = pixels[~tissue], pixels[tissue]
    assert (glass.min(axis=1) > 215).mean() > 0.99  # bright, grey-white glass
    assert (stained[:, 1] < stained[:, 0]).mean() > 0.95  # pink to purple: less green than red
    assert stained.mean() < glass.mean() - 40


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(kind="ndpi"), "unknown slide kind"),
        (dict(tile=100), "multiple of 16"),
        (dict(mpp=0.0), "mpp"),
        (dict(compression="webp"), "unknown compression"),
        (dict(tissue_fraction=1.5), "tissue_fraction"),
    ],
)
def test_bad_options_name_the_file(tmp_path, options, message):
    with pytest.raises(ValueError, match=f"bad.svs: .*{message}"):
        write_synthetic_slide(tmp_path / "bad.svs", (256, 256), **options)
    assert not (tmp_path / "bad.svs").exists()


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        write_synthetic_slide(tmp_path / "nowhere" / "slide.svs", (256, 256))
