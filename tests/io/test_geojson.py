"""Masks as QuPath GeoJSON: read back with json, each polygon's area against its region's pixel count."""

import json

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk, ellipse

from glmed.io.geojson import mask_to_geojson, write_geojson
from glmed.io.writers import write_pyramidal_tiff

CLASSES = ["background", "tumour", "stroma"]


def shoelace(ring):
    """Signed area of a closed [[x, y], ...] ring: positive when counter-clockwise in (x, y)."""
    xy = np.asarray(ring, dtype=float)
    x, y = xy[:, 0], xy[:, 1]
    return float(np.dot(x[:-1], y[1:]) - np.dot(y[:-1], x[1:])) / 2


def area(polygon):
    return abs(shoelace(polygon[0])) - sum(abs(shoelace(hole)) for hole in polygon[1:])


def regions(mask, value):
    """Pixel counts of the 4-connected regions of ``value``, in raster order of their first pixel."""
    labels, count = ndimage.label(mask == value)
    return np.bincount(labels.ravel(), minlength=count + 1)[1:]


@pytest.fixture
def mask():
    """Two classes: a ring (with an island in its hole), a notched disk, an ellipse, specks, a diagonal pair."""
    mask = np.zeros((400, 600), np.uint8)
    mask[disk((150, 150), 100)] = 1
    mask[disk((150, 150), 40)] = 0
    mask[disk((150, 150), 15)] = 1
    mask[disk((300, 420), 60)] = 1
    mask[290:310, 300:420] = 0  # a notch
    mask[ellipse(100, 450, 60, 110, rotation=0.4)] = 2
    mask[ellipse(330, 150, 30, 70)] = 2
    mask[5:8, 5:8] = 1
    mask[390, 590] = mask[391, 591] = 1  # touching by a corner only: two regions
    return mask


def read_back(tmp_path, mask, **options):
    path = tmp_path / "regions.geojson"
    count = write_geojson(path, mask, **options)
    collection = json.loads(path.read_text(encoding="utf-8"))
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == count
    return collection


@pytest.mark.parametrize("tolerance", [0.0, 1.0, 3.0])
def test_polygon_areas_match_the_pixel_counts(tmp_path, mask, tolerance):
    collection = read_back(tmp_path, mask, classes=CLASSES, tolerance=tolerance)
    features = collection["features"]
    expected = [(name, count) for value, name in ((1, "tumour"), (2, "stroma")) for count in regions(mask, value)]
    assert [f["properties"]["classification"]["name"] for f in features] == [name for name, _ in expected]
    for feature, (_, pixels) in zip(features, expected):
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon"
        assert feature["properties"]["measurements"]["Area px^2"] == pixels
        assert area(geometry["coordinates"]) == pytest.approx(pixels, rel=0.02, abs=0.5)
        if tolerance == 0:
            assert area(geometry["coordinates"]) == pytest.approx(pixels, abs=0.25)  # pixel edges, exactly


def test_features_are_qupath_annotations(tmp_path, mask):
    features = read_back(tmp_path, mask, classes=CLASSES, colors={2: (10, 20, 30)})["features"]
    for feature in features:
        assert feature["type"] == "Feature"
        properties = feature["properties"]
        assert properties["objectType"] == "annotation"
        classification = properties["classification"]
        assert set(classification) == {"name", "color"}
        expected = [200, 0, 0] if classification["name"] == "tumour" else [10, 20, 30]
        assert classification["color"] == expected


def test_rings_are_closed_outer_counter_clockwise_and_holes_clockwise(tmp_path, mask):
    features = read_back(tmp_path, mask, classes=CLASSES)["features"]
    ring_feature = max(features, key=lambda f: len(f["geometry"]["coordinates"]))
    assert len(ring_feature["geometry"]["coordinates"]) == 2  # the ring's hole (its island is a feature of its own)
    for feature in features:
        rings = feature["geometry"]["coordinates"]
        assert all(ring[0] == ring[-1] and len(ring) >= 4 for ring in rings)
        assert shoelace(rings[0]) > 0 and all(shoelace(hole) < 0 for hole in rings[1:])


def test_coordinates_are_level_0_pixel_corners_x_then_y():
    mask = np.zeros((20, 30), np.uint8)
    mask[4:9, 10:22] = 1
    (feature,) = mask_to_geojson(mask)["features"]
    ring = np.asarray(feature["geometry"]["coordinates"][0])
    assert (ring[:, 0].min(), ring[:, 0].max(), ring[:, 1].min(), ring[:, 1].max()) == (10, 22, 4, 9)


def test_a_downsampled_mask_scales_to_level_0(mask):
    full = mask_to_geojson(mask, classes=CLASSES, mpp=0.5)["features"]
    scaled = mask_to_geojson(mask, classes=CLASSES, scale=8, offset=(1000, 2000), mpp=0.5)["features"]
    assert len(full) == len(scaled)
    for a, b in zip(full, scaled):
        ring_a, ring_b = np.asarray(a["geometry"]["coordinates"][0]), np.asarray(b["geometry"]["coordinates"][0])
        np.testing.assert_allclose(ring_b, ring_a * 8 + [2000, 1000])
        assert b["properties"]["measurements"]["Area px^2"] == 64 * a["properties"]["measurements"]["Area px^2"]
        assert b["properties"]["measurements"]["Area µm^2"] == pytest.approx(
            16 * a["properties"]["measurements"]["Area px^2"]
        )
    anisotropic = mask_to_geojson(mask, scale=(2, 4))["features"][0]
    assert area(anisotropic["geometry"]["coordinates"]) == pytest.approx(8 * area(full[0]["geometry"]["coordinates"]))


def test_areas_in_square_microns_when_the_resolution_is_known(mask):
    feature = mask_to_geojson(mask, mpp=0.25)["features"][0]
    measurements = feature["properties"]["measurements"]
    assert measurements["Area µm^2"] == pytest.approx(measurements["Area px^2"] / 16)
    assert "Area µm^2" not in mask_to_geojson(mask)["features"][0]["properties"]["measurements"]


def test_an_empty_mask_gives_an_empty_collection(tmp_path):
    assert read_back(tmp_path, np.zeros((50, 60), np.uint8)) == {"type": "FeatureCollection", "features": []}
    assert mask_to_geojson(np.full((5, 5), 3, np.uint8), background=3)["features"] == []


def test_one_multipolygon_per_class(mask):
    features = mask_to_geojson(mask, classes=CLASSES, group="class")["features"]
    assert [f["properties"]["classification"]["name"] for f in features] == ["tumour", "stroma"]
    for value, feature in zip((1, 2), features):
        geometry = feature["geometry"]
        assert geometry["type"] == "MultiPolygon"
        assert len(geometry["coordinates"]) == len(regions(mask, value))
        total = sum(area(polygon) for polygon in geometry["coordinates"])
        assert total == pytest.approx((mask == value).sum(), rel=0.02)


@pytest.mark.parametrize("binary", ["bool", "0/255"])
def test_binary_masks_are_class_1(binary):
    mask = np.zeros((40, 40), bool)
    mask[10:30, 5:25] = True
    if binary == "0/255":
        mask = mask.astype(np.uint8) * 255
    (feature,) = mask_to_geojson(mask, classes=["background", "lesion"])["features"]
    assert feature["properties"]["classification"] == {"name": "lesion", "color": [200, 0, 0]}
    assert mask_to_geojson(mask)["features"][0]["properties"]["classification"]["name"] == "class 1"


def test_small_regions_can_be_left_out(mask):
    every = mask_to_geojson(mask)["features"]
    large = mask_to_geojson(mask, min_area=50)["features"]
    assert len(every) - len(large) == 3  # the 3 x 3 speck and the two single pixels


def test_simplification_keeps_the_file_small(mask):
    exact = json.dumps(mask_to_geojson(mask, tolerance=0))
    simple = json.dumps(mask_to_geojson(mask, tolerance=1.0))
    assert len(simple) < len(exact) / 2


def test_a_mask_file_is_read_from_its_pyramid(tmp_path, mask):
    big = np.kron(mask, np.ones((4, 4), np.uint8))  # the level-0 mask is 4 times the fixture
    path = tmp_path / "mask.tif"
    write_pyramidal_tiff(path, (big > 0).astype(np.uint8) * 255, tile=256, compression="zlib", resampling="nearest")
    features = mask_to_geojson(path, classes=["background", "tumour"], view_side=600)["features"]
    names = [f["properties"]["classification"]["name"] for f in features]
    assert set(names) == {"tumour"}
    counts = regions(big > 0, True)
    counts = counts[counts >= 16 * 50]  # the specks survive a 4x reduction as single pixels, or not at all
    largest = sorted((area(f["geometry"]["coordinates"]) for f in features), reverse=True)[: len(counts)]
    for got, want in zip(largest, sorted(counts, reverse=True)):
        assert got == pytest.approx(want, rel=0.02)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4, 3), np.uint8), "h x w array"),
        (np.zeros((4, 4), np.float32), "class indices"),
        (np.zeros((0, 4), np.uint8), "non-empty"),
    ],
)
def test_bad_masks_are_named(bad, message):
    with pytest.raises(ValueError, match=f"mask: .*{message}"):
        mask_to_geojson(bad)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(scale=0), "scale must be a positive"),
        (dict(scale=(1, 2, 3)), "scale must be"),
        (dict(group="slide"), "unknown group"),
        (dict(tolerance=-1), "must be >= 0"),
        (dict(classes="tumour"), "list of names"),
        (dict(colors={1: (300, 0, 0)}), "colour"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        mask_to_geojson(np.ones((4, 4), np.uint8), **options)


def test_writing_into_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match="nowhere.*does not exist"):
        write_geojson(tmp_path / "nowhere" / "a.geojson", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="is a folder"):
        write_geojson(tmp_path, np.zeros((4, 4), np.uint8))
