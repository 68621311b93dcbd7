"""predict_to_tiff's outputs people open: a mask a viewer shows, its metadata, an outline thumbnail, QuPath GeoJSON."""

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import glmed
from glmed.inference.result import thumbnail_size
from glmed.inference.slide import predict_to_tiff
from glmed.inference.slide_outputs import write_mask_geojson, write_outline_thumbnail
from glmed.io import ArrayReader, open_image
from glmed.io.geojson import class_colour
from glmed.io.mask_tiff import mask_encoding, read_mask_metadata, write_mask_tiff
from glmed.io.resolution import microns_per_pixel
from glmed.models.glnet import GLNet

SIZES = dict(fpn_channels=16, global_size=64, patch_size=64, overlap=8)
MPP = 0.25  # write_synthetic_slide's default: a 40x scan

# Two known regions, as fractions of the slide: (row0, col0, row1, col1).
REGIONS = ((0.1, 0.1, 0.4, 0.3), (0.5, 0.55, 0.9, 0.9))


def two_regions(model, monkeypatch):
    """A global-only model whose mask is exactly REGIONS (its global logits are scripted)."""

    def logits(global_maps, size):
        out = torch.zeros(1, model.config.num_classes, *size)
        for number, (r0, c0, r1, c1) in enumerate(REGIONS, start=1):
            rows = slice(round(r0 * size[0]), round(r1 * size[0]))
            cols = slice(round(c0 * size[1]), round(c1 * size[1]))
            out[:, min(number, model.config.num_classes - 1), rows, cols] = 9.0
        return out

    monkeypatch.setattr(model, "global_logits", logits)
    return model


def shoelace(ring):
    xy = np.asarray(ring, dtype=float)
    return abs(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1))) / 2


def polygon_area(feature):
    outer, *holes = feature["geometry"]["coordinates"]
    return shoelace(outer) - sum(shoelace(hole) for hole in holes)


def test_a_binary_mask_is_stored_0_255_with_its_classes_size_and_resolution(tmp_path, slide):
    torch.manual_seed(0)
    model = GLNet(2, "resnet18", "local_only", **SIZES)
    written = predict_to_tiff(model, slide, tmp_path / "mask.tif", tile=128, classes=["background", "tumour"],
                              tissue=False)
    expected = glmed.predict(model, slide).mask
    with tifffile.TiffFile(written.path) as tiff:
        pages = list(tiff.pages)
        stored = pages[0].asarray()
        metadata = json.loads(pages[0].description)["glmed_mask"]
        resolutions = [(page.tags["XResolution"].value, page.tags["YResolution"].value) for page in pages]
        units = {page.tags["ResolutionUnit"].value for page in pages}
    np.testing.assert_array_equal(stored, expected * 255)
    assert set(np.unique(stored).tolist()) <= {0, 255}
    assert metadata["classes"] == ["background", "tumour"]
    assert metadata["values"] == {"0": "background", "255": "tumour"}
    assert metadata["level0_size"] == [300, 420] and metadata["source"] == slide.name
    assert metadata["mpp"] == pytest.approx([MPP, MPP], rel=1e-6)
    assert read_mask_metadata(written.path) == metadata
    assert units == {tifffile.RESUNIT.CENTIMETER}
    for level, (x, y) in enumerate(resolutions):  # each level's own µm/px: 0.25, 0.5, 1.0 (ceil halvings)
        downsample = 420 / pages[level].imagewidth, 300 / pages[level].imagelength
        assert 1e4 * x[1] / x[0] == pytest.approx(MPP * downsample[0], rel=1e-4)
        assert 1e4 * y[1] / y[0] == pytest.approx(MPP * downsample[1], rel=1e-4)
    with open_image(written.path) as reader:
        assert microns_per_pixel(reader) == pytest.approx((MPP, MPP), rel=1e-4)
    assert written.mpp == pytest.approx((MPP, MPP))
    assert written.class_pixels == [int((expected == 0).sum()), int(expected.sum())]
    assert written.foreground_um2 == pytest.approx(expected.sum() * MPP**2)


def test_more_classes_are_indices_with_a_colour_map_and_no_resolution_without_one(tmp_path):
    torch.manual_seed(0)
    model = GLNet(4, "resnet18", "local_only", **SIZES)
    image = np.random.default_rng(0).integers(0, 256, (130, 150, 3), dtype=np.uint8)  # an array: no µm/px
    written = predict_to_tiff(model, image, tmp_path / "mask.tif", tile=64, tissue=False)  # noise, not a slide
    expected = glmed.predict(model, image).mask
    with tifffile.TiffFile(written.path) as tiff:
        page = tiff.pages.first
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        colormap = page.colormap
        np.testing.assert_array_equal(page.asarray(), expected)  # the indices, which viewers show in colour
        assert page.tags.valueof("ResolutionUnit") in (None, tifffile.RESUNIT.NONE, tifffile.RESUNIT.INCH)
    for index in range(4):
        assert tuple(colormap[:, index] // 257) == class_colour(index)
    metadata = read_mask_metadata(written.path)
    assert metadata["classes"] == ["background", "class 1", "class 2", "class 3"]
    assert metadata["values"] == {"0": "background", "1": "class 1", "2": "class 2", "3": "class 3"}
    assert metadata["mpp"] is None and written.mpp is None and written.foreground_um2 is None
    with open_image(written.path) as reader:
        np.testing.assert_array_equal(reader.read((0, 0, *reader.size))[..., 0], expected)
        assert microns_per_pixel(reader) is None
    assert sum(written.class_pixels) == expected.size


def test_geojson_and_thumbnail_show_the_known_regions(tmp_path, slide, monkeypatch):
    model = two_regions(GLNet(2, "resnet18", "global_only", **SIZES), monkeypatch)
    written = predict_to_tiff(model, slide, tmp_path / "mask.tif", classes=["background", "tumour"],
                              geojson=tmp_path / "mask.geojson", thumbnail=tmp_path / "mask.png")
    with open_image(written.path) as reader:
        mask = reader.read((0, 0, *reader.size))[..., 0] // 255
    assert written.geojson == tmp_path / "mask.geojson" and written.thumbnail == tmp_path / "mask.png"

    collection = json.loads(written.geojson.read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 2
    for feature, (r0, c0, r1, c1) in zip(collection["features"], REGIONS, strict=True):
        assert feature["geometry"]["type"] == "Polygon"
        properties = feature["properties"]
        assert properties["classification"]["name"] == "tumour"
        xs, ys = np.asarray(feature["geometry"]["coordinates"][0]).T  # level-0 [x, y]
        assert (xs.min(), xs.max()) == pytest.approx((c0 * 420, c1 * 420), abs=8)
        assert (ys.min(), ys.max()) == pytest.approx((r0 * 300, r1 * 300), abs=8)
        area = properties["measurements"]["Area px^2"]
        assert polygon_area(feature) == pytest.approx(area, rel=0.02)
        assert properties["measurements"]["Area µm^2"] == pytest.approx(area * MPP**2, rel=1e-3)
    total = sum(f["properties"]["measurements"]["Area px^2"] for f in collection["features"])
    assert total == pytest.approx(mask.sum(), rel=0.02) and written.foreground_px == mask.sum()

    thumbnail = np.asarray(Image.open(written.thumbnail))
    assert thumbnail.shape == (300, 420, 3)  # a slide smaller than the thumbnail keeps its size
    outline = (thumbnail == class_colour(1)).all(axis=2)
    assert outline[mask == 0].sum() == 0  # drawn just inside the regions
    perimeter = sum(2 * ((r1 - r0) * 300 + (c1 - c0) * 420) for r0, c0, r1, c1 in REGIONS)
    assert 0.8 * perimeter < outline.sum() < 1.1 * perimeter


def test_geojson_from_a_coarse_level_is_scaled_back_to_level_0(tmp_path, monkeypatch):
    model = two_regions(GLNet(2, "resnet18", "global_only", **SIZES), monkeypatch)
    image = np.full((600, 840, 3), 200, np.uint8)
    written = predict_to_tiff(model, image, tmp_path / "mask.tif", tile=64)
    assert write_mask_geojson(written.path, tmp_path / "coarse.geojson", ["background", "tumour"], view_side=105) == 2
    features = json.loads((tmp_path / "coarse.geojson").read_text())["features"]
    for feature, (r0, c0, r1, c1) in zip(features, REGIONS, strict=True):
        xs, ys = np.asarray(feature["geometry"]["coordinates"][0]).T
        assert (xs.min(), xs.max()) == pytest.approx((c0 * 840, c1 * 840), abs=16)  # within two 8-pixel view pixels
        assert (ys.min(), ys.max()) == pytest.approx((r0 * 600, r1 * 600), abs=16)
        assert "Area µm^2" not in feature["properties"]["measurements"]  # an array has no µm/px
    total = sum(polygon_area(feature) for feature in features)
    assert total == pytest.approx(written.foreground_px, rel=0.05)


def test_a_thumbnail_is_at_most_its_side_and_outlines_every_class(tmp_path):
    mask = np.zeros((400, 600), np.uint8)
    mask[50:150, 100:300], mask[200:350, 350:550] = 1, 2
    encoding = mask_encoding(3)
    write_mask_tiff(tmp_path / "mask.tif", mask, encoding, tile=64)
    image = np.full((400, 600, 3), 230, np.uint8)
    with ArrayReader(image) as reader:
        size = write_outline_thumbnail(reader, tmp_path / "mask.tif", tmp_path / "thumb.png", encoding, side=150)
    assert size == thumbnail_size((400, 600), 150) == (100, 150)
    thumbnail = np.asarray(Image.open(tmp_path / "thumb.png"))
    assert thumbnail.shape == (100, 150, 3)
    for index in (1, 2):
        assert (thumbnail == class_colour(index)).all(axis=2).sum() > 50
    assert (thumbnail == 230).all(axis=2).mean() > 0.8  # the picture is still there


@pytest.mark.parametrize("option, value, message", [
    ("thumbnail", "thumb.jpg", "a thumbnail must be named .png"),
    ("geojson", "regions.txt", "a GeoJSON must be named .geojson or .json"),
    ("geojson", "missing/regions.geojson", "does not exist"),
    ("classes", ["background"], "one non-empty name per class"),
])
def test_bad_output_options_are_refused_before_any_inference(tmp_path, monkeypatch, option, value, message):
    model = GLNet(2, "resnet18", "local_only", **SIZES)
    monkeypatch.setattr(model, "local_features", lambda *args, **kwargs: pytest.fail("inference ran"))
    if option != "classes":
        value = tmp_path / value
    with pytest.raises(ValueError, match=message):
        predict_to_tiff(model, np.zeros((64, 64, 3), np.uint8), tmp_path / "mask.tif", **{option: value})


def test_the_tissue_found_on_the_slide_is_reported(tmp_path):
    from glmed.data.synthetic.slides import write_synthetic_slide

    # 2 µm/px: the tissue pieces of so small a slide are then larger than the clean-up's smallest (5000 µm²)
    written = write_synthetic_slide(tmp_path / "slide.svs", (256, 320), seed=3, tissue_fraction=0.3, tile=64, mpp=2.0)
    model = GLNet(2, "resnet18", "local_only", **SIZES)
    result = predict_to_tiff(model, written.path, tmp_path / "mask.tif")
    assert result.tissue is not None and result.tissue.image_size == (256, 320)
    assert result.tissue.fraction == pytest.approx(written.tissue_fraction, abs=0.05)
    assert result.tissue.area_um2 == pytest.approx(result.tissue.area_px * 2.0**2)
    assert predict_to_tiff(model, written.path, tmp_path / "mask.tif", tissue=False).tissue is None
    grey = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    assert predict_to_tiff(model, grey, tmp_path / "grey.tif").tissue is None  # no colour, no saturation
