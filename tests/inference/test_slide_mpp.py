"""predict_to_tiff(mpp=...): slides segmented at a chosen µm/px, read from the right pyramid level."""

import json

import numpy as np
import pytest
import tifffile
import torch

from glmed.data.synthetic.slides import write_synthetic_slide
from glmed.inference.inferer import GlobalLocalInferer
from glmed.inference.slide import _run_identity, predict_to_tiff
from glmed.io import open_image
from glmed.io.mask_tiff import read_mask_metadata
from glmed.io.resampled import ResampledReader
from glmed.io.resolution import microns_per_pixel
from glmed.io.slide_reader import SlideReader
from glmed.io.tiff_reader import TiffReader
from glmed.models.checkpoint import load_model, save_model
from glmed.models.glnet import GLNet

SIZES = dict(fpn_channels=16, global_size=64, patch_size=64, overlap=8)
SLIDE = (256, 320)
"""Level 0 at 0.25 µm/px (40x); the generic TIFF halves per level, the Aperio SVS quarters."""

KINDS = {"tiff": ("slide.tif", TiffReader), "aperio": ("slide.svs", SlideReader)}


def make_slide(folder, kind):
    name, reader_class = KINDS[kind]
    path = write_synthetic_slide(folder / name, SLIDE, seed=3, kind=kind, tile=64, mpp=0.25).path
    with open_image(path) as reader:
        assert type(reader) is reader_class  # the reader the test means, or the test proves nothing
    return path


def count_levels(monkeypatch, reader_class):
    """Record the level of every region the reader class reads."""
    levels = []
    original = reader_class._read_level

    def recording(self, level, box):
        levels.append(level)
        return original(self, level, box)

    monkeypatch.setattr(reader_class, "_read_level", recording)
    return levels


def model(**options):
    torch.manual_seed(0)
    return GLNet(2, "resnet18", "g2l", **SIZES, **options)


@pytest.mark.parametrize(
    "kind, mpp, level, size",
    [
        ("tiff", 0.5, 1, (128, 160)),  # level 1 is 0.5 µm/px: read as it is
        ("tiff", 0.4, 0, (160, 200)),  # between levels: the finer one, resampled
        ("tiff", 1.0, 2, (64, 80)),
        ("aperio", 0.5, 0, (128, 160)),  # Aperio's level 1 is 1.0 µm/px, too coarse for 0.5
        ("aperio", 1.0, 1, (64, 80)),
        ("aperio", 0.25, 0, SLIDE),
    ],
)
def test_mpp_selects_the_right_level(tmp_path, monkeypatch, kind, mpp, level, size):
    slide = make_slide(tmp_path, kind)
    levels = count_levels(monkeypatch, KINDS[kind][1])
    written = predict_to_tiff(model(), slide, tmp_path / "mask.tif", mpp=mpp, tissue=False, batch_size=4)
    # patches come from the level chosen, the global view from coarser ones: nothing finer is ever read
    assert min(levels) == level and levels.count(level) >= written.patches > 0
    assert written.mask_size == size and written.size == SLIDE
    with open_image(written.path) as mask:
        assert mask.size == size
        assert microns_per_pixel(mask) == pytest.approx((0.25 * SLIDE[0] / size[0], 0.25 * SLIDE[1] / size[1]))


def test_the_slides_own_mpp_gives_the_mask_without_mpp(tmp_path):
    slide = make_slide(tmp_path, "tiff")
    plain = predict_to_tiff(model(), slide, tmp_path / "plain.tif", tissue=False)
    same = predict_to_tiff(model(), slide, tmp_path / "same.tif", tissue=False, mpp=0.25)
    with open_image(plain.path) as a, open_image(same.path) as b:
        np.testing.assert_array_equal(a.read((0, 0, *SLIDE)), b.read((0, 0, *SLIDE)))


def test_metadata_carries_the_masks_and_the_slides_resolution(tmp_path):
    slide = make_slide(tmp_path, "aperio")
    written = predict_to_tiff(model(), slide, tmp_path / "mask.tif", mpp=1.0, tissue=False)
    metadata = read_mask_metadata(written.path)
    assert metadata["level0_size"] == [64, 80] and metadata["mpp"] == pytest.approx([1.0, 1.0])
    assert metadata["slide_size"] == list(SLIDE) and metadata["slide_mpp"] == pytest.approx([0.25, 0.25])
    assert written.mpp == pytest.approx((0.25, 0.25)) and written.mask_mpp == pytest.approx((1.0, 1.0))
    # areas: mask pixels are 16 slide pixels each
    assert written.foreground_px == sum(written.class_pixels[1:]) * 16
    assert written.foreground_um2 == pytest.approx(sum(written.class_pixels[1:]) * 1.0)


def test_at_the_slides_resolution_the_metadata_names_one_size(tmp_path):
    slide = make_slide(tmp_path, "tiff")
    written = predict_to_tiff(model(), slide, tmp_path / "mask.tif", tissue=False)
    metadata = read_mask_metadata(written.path)
    assert metadata["level0_size"] == metadata["slide_size"] == list(SLIDE)
    assert metadata["mpp"] == metadata["slide_mpp"] == pytest.approx([0.25, 0.25])
    assert written.mask_size == written.size


def test_geojson_and_thumbnail_stay_in_the_slides_pixels(tmp_path, monkeypatch):
    slide = make_slide(tmp_path, "tiff")
    net = GLNet(2, "resnet18", "global_only", **SIZES)

    def square(global_maps, size):  # foreground on rows 1/4..1/2 and columns 1/2..3/4 of the slide
        logits = torch.zeros(1, 2, *size)
        logits[:, 1, size[0] // 4 : size[0] // 2, size[1] // 2 : 3 * size[1] // 4] = 5.0
        return logits

    monkeypatch.setattr(net, "global_logits", square)
    written = predict_to_tiff(net, slide, tmp_path / "mask.tif", mpp=1.0, tissue=False,
                              geojson=tmp_path / "mask.geojson", thumbnail=tmp_path / "thumb.png")
    features = json.loads(written.geojson.read_text())["features"]
    assert len(features) == 1
    ring = np.asarray(features[0]["geometry"]["coordinates"][0])  # [x, y] in the slide's level-0 pixels
    assert ring[:, 0].min() == pytest.approx(160, abs=4) and ring[:, 0].max() == pytest.approx(240, abs=4)
    assert ring[:, 1].min() == pytest.approx(64, abs=4) and ring[:, 1].max() == pytest.approx(128, abs=4)
    measurements = features[0]["properties"]["measurements"]
    assert measurements["Area µm^2"] == pytest.approx(written.foreground_um2, rel=0.02)
    assert written.foreground_um2 == pytest.approx(80 * 64 * 0.25**2, rel=0.15)  # bilinear edges: ±1 mask pixel
    from PIL import Image

    outlined = np.asarray(Image.open(written.thumbnail))
    assert outlined.shape[:2] == SLIDE  # the slide's own size (under the thumbnail's 1024 pixels)
    with open_image(written.path) as mask:  # what the thumbnail outlines: the mask at the slide's pixels
        sampled = mask.sampled(SLIDE)[..., 0] // 255
    rows, cols = np.nonzero(sampled)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == pytest.approx((64, 128, 160, 240), abs=4)


def test_the_checkpoints_mpp_is_the_default_and_far_ones_get_a_note(tmp_path):
    slide = make_slide(tmp_path, "tiff")
    path = save_model(model(trained_mpp=0.5), tmp_path / "model.pt")
    trained = load_model(path)
    assert trained.config.trained_mpp == 0.5
    default = predict_to_tiff(trained, slide, tmp_path / "default.tif", tissue=False)
    assert default.mask_size == (128, 160) and not any("trained at" in note for note in default.notes)
    far = predict_to_tiff(trained, slide, tmp_path / "far.tif", tissue=False, mpp=1.0)
    assert any("2.0x coarser than the 0.5 µm/px the model was trained at" in note for note in far.notes)
    near = predict_to_tiff(trained, slide, tmp_path / "near.tif", tissue=False, mpp=0.6)
    assert not any("trained at" in note for note in near.notes)


def test_mpp_on_a_slide_without_a_resolution_names_the_file(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((96, 96, 3), np.uint8), photometric="rgb", tile=(32, 32))
    with pytest.raises(ValueError, match="plain.tif: mpp=0.5 asks for a resolution, but the file does not say"):
        predict_to_tiff(model(), path, tmp_path / "mask.tif", mpp=0.5)
    with pytest.raises(ValueError, match="mpp is the µm per pixel"):
        predict_to_tiff(model(), path, tmp_path / "mask.tif", mpp=-1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.tif"]  # nothing left behind
    # a model trained at a known µm/px segments such a slide at level 0, and says so
    written = predict_to_tiff(model(trained_mpp=0.5), path, tmp_path / "mask.tif")
    assert written.mask_size == (96, 96) and any("does not say its µm per pixel" in n for n in written.notes)


def test_the_working_mpp_is_part_of_the_resume_identity(tmp_path):
    slide = make_slide(tmp_path, "tiff")
    net, inferer = model(), GlobalLocalInferer(batch_size=2)
    with open_image(slide) as reader:
        half = ResampledReader(reader, 0.5, (0.25, 0.25))
        assert _run_identity(net, slide, reader, inferer) != _run_identity(net, slide, half, inferer, 0.5)
        assert _run_identity(net, slide, half, inferer, 0.5) != _run_identity(net, slide, half, inferer, 0.501)
        # the model's trained_mpp counts only through the resolution it gives
        assert _run_identity(net, slide, reader, inferer) == _run_identity(model(trained_mpp=0.5), slide, reader,
                                                                           inferer)


def test_a_mask_made_at_another_mpp_is_polygonised_in_its_slides_pixels(tmp_path):
    from glmed.io.geojson import mask_to_geojson
    from glmed.io.mask_tiff import mask_encoding, write_mask_tiff

    mask = np.zeros((50, 60), np.uint8)
    mask[10:20, 30:45] = 1
    write_mask_tiff(tmp_path / "half.tif", mask, mask_encoding(2), mpp=(0.5, 0.5), slide_size=(100, 120),
                    slide_mpp=(0.25, 0.25))
    write_mask_tiff(tmp_path / "own.tif", mask, mask_encoding(2), mpp=(0.5, 0.5))  # a mask at its slide's µm/px
    for name, scale, mpp in (("half.tif", 2, 0.25), ("own.tif", 1, 0.5)):
        feature, = mask_to_geojson(tmp_path / name, tolerance=0)["features"]
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert (ring[:, 0].min(), ring[:, 0].max()) == (30 * scale, 45 * scale)
        assert (ring[:, 1].min(), ring[:, 1].max()) == (10 * scale, 20 * scale)
        measured = feature["properties"]["measurements"]
        assert measured["Area px^2"] == 150 * scale**2
        assert measured["Area µm^2"] == pytest.approx(150 * scale**2 * mpp**2)  # 37.5 µm² either way
