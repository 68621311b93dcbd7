import time

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.measure import perimeter

from glmed.data.layouts import find_deepglobe, find_inria, find_isic, scan_dataset
from glmed.data.synthetic import (
    make_aerial_image,
    make_dermoscopy_image,
    make_landcover_image,
    write_deepglobe_dataset,
    write_inria_dataset,
    write_isic_dataset,
)
from glmed.io.labels import DEEPGLOBE_PALETTE


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("make", [make_dermoscopy_image, make_landcover_image, make_aerial_image])
def test_generators_are_deterministic_by_seed(make):
    image, label = make((120, 170), 11)
    again, label_again = make((120, 170), 11)
    other, _ = make((120, 170), 12)
    assert image.shape == (120, 170, 3) and image.dtype == np.uint8
    assert label.shape == (120, 170) and label.dtype == np.uint8
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(label, label_again)
    assert not np.array_equal(image, other)


def test_same_seed_writes_identical_bytes(tmp_path):
    first = write_isic_dataset(tmp_path / "a", n_images=3, size_range=(100, 160), seed=5)
    second = write_isic_dataset(tmp_path / "b", n_images=3, size_range=(100, 160), seed=5)
    third = write_isic_dataset(tmp_path / "c", n_images=3, size_range=(100, 160), seed=6)
    assert _tree(first) == _tree(second)
    assert _tree(first) != _tree(third)
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind


def test_isic_layout_matches_the_challenge_files(tmp_path):
    root = write_isic_dataset(tmp_path, n_images=3, sizes=[(90, 120), (100, 150), (80, 80)], seed=0)
    images, truths = root / "ISIC2018_Task1-2_Training_Input", root / "ISIC2018_Task1_Training_GroundTruth"
    expected_images = [f"ISIC_{i:07d}.jpg" for i in range(3)]
    assert sorted(p.name for p in images.iterdir()) == sorted(expected_images + ["ATTRIBUTION.txt", "LICENSE.txt"])
    for index, size in enumerate([(90, 120), (100, 150), (80, 80)]):
        with Image.open(images / f"ISIC_{index:07d}.jpg") as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == size[::-1]
        with Image.open(truths / f"ISIC_{index:07d}_segmentation.png") as mask:
            assert mask.format == "PNG" and mask.mode == "L" and mask.size == size[::-1]
            assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    table = scan_dataset(find_isic(root), "binary")
    assert table["image_id"].tolist() == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    validation = write_isic_dataset(tmp_path / "val", n_images=1, sizes=[(64, 64)], split="Validation")
    assert len(find_isic(validation, "validation")) == 1


def test_default_isic_sizes_are_landscape_and_never_smaller_than_a_patch(tmp_path):
    root = write_isic_dataset(tmp_path, n_images=2, seed=0)
    for path in sorted((root / "ISIC2018_Task1-2_Training_Input").glob("*.jpg")):
        with Image.open(path) as image:
            width, height = image.size
        assert 540 <= height <= 768 and min(abs(width / height - 4 / 3), abs(width / height - 3 / 2)) < 0.01


def test_deepglobe_and_inria_layouts(tmp_path):
    root = write_deepglobe_dataset(tmp_path / "deepglobe", n_images=2, size_range=(96, 96), seed=1)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["100_mask.png", "100_sat.jpg", "101_mask.png",
                                                                 "101_sat.jpg"]
    colours = np.asarray(Image.open(root / "train" / "100_mask.png")).reshape(-1, 3)
    assert {tuple(c) for c in np.unique(colours, axis=0)} <= {tuple(c) for c in DEEPGLOBE_PALETTE}
    assert (root / "class_dict.csv").read_text().splitlines()[:2] == ["name,r,g,b", "urban_land,0,255,255"]
    assert len(scan_dataset(find_deepglobe(root), "deepglobe")) == 2
    inria = write_inria_dataset(tmp_path / "inria", n_images=2, size_range=(80, 80), seed=1)
    gt = tifffile.imread(inria / "train" / "gt" / "austin1.tif")
    assert gt.shape == (80, 80) and gt.dtype == np.uint8 and set(np.unique(gt).tolist()) == {0, 255}
    assert tifffile.imread(inria / "train" / "images" / "chicago1.tif").shape == (80, 80, 3)
    assert len(scan_dataset(find_inria(inria), "binary")) == 2


def test_writers_refuse_inconsistent_arguments(tmp_path):
    with pytest.raises(ValueError, match="one size per image"):
        write_isic_dataset(tmp_path, n_images=2, sizes=[(64, 64)])
    with pytest.raises(ValueError, match="size_range"):
        write_isic_dataset(tmp_path, n_images=1, size_range=(300, 200))
    with pytest.raises(ValueError, match="at least 16"):
        make_dermoscopy_image((8, 100), 0)


def test_most_dermoscopy_images_are_under_20_percent_foreground():
    fractions = np.array([make_dermoscopy_image((96, 128), seed)[1].mean() for seed in range(20)])
    assert (fractions > 0).all() and (fractions < 0.8).all()
    assert (fractions < 0.2).mean() > 0.6
    assert (fractions >= 0.1).any()  # not only specks: lesion sizes vary


def test_dermoscopy_lesions_are_dark_irregular_and_coloured():
    image, mask = make_dermoscopy_image((512, 683), 4)
    grey = image.astype(float).mean(axis=2)
    assert grey[mask == 1].mean() < grey[mask == 0].mean() - 20
    inside = image[mask == 1].astype(float)
    assert inside.std(axis=0).min() > 5  # internal colour variation
    compactness = perimeter(mask) ** 2 / (4 * np.pi * mask.sum())
    assert compactness > 1.3  # an ellipse is close to 1; fine, irregular borders are far more


def test_landcover_classes_and_colours():
    image, classes = make_landcover_image((256, 256), 2)
    present = np.unique(classes)
    assert present.max() <= 5 and len(present) >= 3  # "unknown" is never drawn
    means = {c: image[classes == c].astype(float).mean(axis=0) for c in present}
    assert means[3].sum() < means[1].sum() and means[3][1] > means[3][2]  # forest: darker than fields, green
    assert means[4][2] > means[4][0]  # water: blue
    _, buildings = make_aerial_image((256, 256), 2)
    assert 0.01 < buildings.mean() < 0.5


def test_generation_is_fast_at_isic_sizes():
    started = time.perf_counter()
    make_dermoscopy_image((768, 1024), 0)
    assert time.perf_counter() - started < 1.5


@pytest.mark.slow
def test_largest_isic_size_takes_seconds():
    started = time.perf_counter()
    image, mask = make_dermoscopy_image((4499, 6748), 0)
    assert time.perf_counter() - started < 15
    assert image.shape == (4499, 6748, 3) and mask.any()


def test_slide_images_are_tissue_on_glass_with_tumour_inside_the_tissue():
    from glmed.data.synthetic import make_slide_image

    image, mask = make_slide_image((300, 400), 3)
    again, _ = make_slide_image((300, 400), 3)
    assert image.shape == (300, 400, 3) and image.dtype == np.uint8 and mask.shape == (300, 400)
    np.testing.assert_array_equal(image, again)  # deterministic by seed
    glass = image.mean(axis=2) > 215
    assert 0.5 < glass.mean() < 0.8  # mostly glass, about a third tissue
    assert mask.any() and not (mask.astype(bool) & glass).any()  # tumour only on tissue
    assert image[mask.astype(bool)].mean() < image[~glass & ~mask.astype(bool)].mean()  # tumour stains darker


# -- the harder benchmark images (make_hard_dermoscopy_image) ----------------------------


def _hard(size, seed):
    from glmed.data.synthetic import make_hard_dermoscopy_image

    return make_hard_dermoscopy_image(size, seed)


def test_hard_dermoscopy_is_deterministic_by_seed():
    image, mask = _hard((96, 144), 3)
    again, mask_again = _hard((96, 144), 3)
    other, _ = _hard((96, 144), 4)
    assert image.shape == (96, 144, 3) and image.dtype == np.uint8
    assert mask.shape == (96, 144) and mask.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, 1}
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(mask, mask_again)
    assert not np.array_equal(image, other)


@pytest.mark.parametrize("size", [(16, 16), (17, 40), (72, 108)])
def test_hard_dermoscopy_mask_is_one_region_without_holes(size):
    from scipy import ndimage

    for seed in range(15):
        mask = _hard(size, seed)[1].astype(bool)
        assert mask.any()
        assert ndimage.label(mask)[1] == 1  # 4-connected, so 8-connected too
        np.testing.assert_array_equal(ndimage.binary_fill_holes(mask), mask)


def test_hard_dermoscopy_lesions_are_mostly_under_20_percent():
    fractions = np.array([_hard((72, 108), seed)[1].mean() for seed in range(40)])
    assert fractions.min() > 0.01 and fractions.max() < 0.45
    assert (fractions < 0.2).mean() >= 0.75
    assert 0.05 < np.median(fractions) < 0.16
    assert (fractions > 0.15).any() and (fractions < 0.05).any()  # sizes spread


def _hard_views(seed, size=(192, 288)):
    from scipy import ndimage

    image, mask = _hard(size, seed)
    grey, mask = image.astype(float).mean(axis=2), mask.astype(bool)
    outside = ~ndimage.binary_dilation(mask, iterations=4)
    return grey, mask, outside


def test_hard_dermoscopy_has_dark_freckles_outside_the_lesion():
    from scipy import ndimage

    blobs = []
    for seed in range(8):
        grey, _, outside = _hard_views(seed)
        height, width = grey.shape
        rows, cols = np.mgrid[0:height, 0:width]
        central = np.hypot(rows / height - 0.5, cols / width - 0.5) < 0.35  # away from dark corners
        dark = (grey < 0.7 * np.median(grey[outside & central])) & outside & central
        regions, _ = ndimage.label(dark)
        areas = np.bincount(regions.ravel())
        compact = [area / ((box[0].stop - box[0].start) * (box[1].stop - box[1].start))
                   for area, box in zip(areas[1:], ndimage.find_objects(regions), strict=True) if area >= 4]
        blobs.append(sum(fill > 0.5 for fill in compact))  # round spots, not thin hairs
    assert np.mean(blobs) >= 3 and np.mean(np.array(blobs) >= 1) >= 0.75


def test_hard_dermoscopy_corners_are_darker_than_the_centre():
    ratios = []
    for seed in range(8):
        grey, mask, _ = _hard_views(seed)
        height, width = grey.shape
        k = height // 8
        corners = np.concatenate([part[~m] for part, m in (
            (grey[:k, :k], mask[:k, :k]), (grey[:k, -k:], mask[:k, -k:]),
            (grey[-k:, :k], mask[-k:, :k]), (grey[-k:, -k:], mask[-k:, -k:]))])
        middle = (slice(height // 3, 2 * height // 3), slice(width // 3, 2 * width // 3))
        ratios.append(corners.mean() / grey[middle][~mask[middle]].mean())
    assert max(ratios) < 0.9 and np.mean(ratios) < 0.75


def test_hard_dermoscopy_lesions_hold_fine_pale_texture():
    from scipy import ndimage

    for seed in range(6):
        grey, mask, _ = _hard_views(seed)
        interior = ndimage.binary_erosion(mask, iterations=3)
        brighter = grey - ndimage.uniform_filter(grey, 6)  # lighter than its 6×6 neighbourhood
        assert (brighter[interior] > 15).mean() > 0.02  # pale channels and grains, a pixel or two wide


def test_isic_writer_takes_the_hard_generator(tmp_path):
    from glmed.data.synthetic import make_hard_dermoscopy_image

    easy = write_isic_dataset(tmp_path / "easy", n_images=2, size_range=(64, 64), seed=2)
    hard = write_isic_dataset(tmp_path / "hard", n_images=2, size_range=(64, 64), seed=2,
                              generator=make_hard_dermoscopy_image)
    assert _tree(easy).keys() == _tree(hard).keys() and _tree(easy) != _tree(hard)
    assert len(scan_dataset(find_isic(hard), "binary")) == 2


def test_hard_generation_is_fast_at_benchmark_sizes():
    _hard((64, 64), 0)  # imports and first calls out of the timing
    started = time.perf_counter()
    image, mask = _hard((1024, 1536), 0)
    assert time.perf_counter() - started < 2.5  # about 0.3 s on an idle core
    assert image.shape == (1024, 1536, 3) and mask.any()


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_dermoscopy_lesion_fraction_is_the_one_asked_for(fraction):
    from scipy import ndimage

    image, mask = make_dermoscopy_image((240, 320), 3, lesion_fraction=fraction)
    assert abs(mask.mean() - fraction) < 1e-3  # exact to the pixel, ties aside
    _, regions = ndimage.label(mask)
    assert regions == 1  # one lesion, no satellites
    grey = image.astype(float).mean(axis=2)
    assert grey[mask == 1].mean() < grey[mask == 0].mean() - 20  # still a dark lesion on skin
    again, mask_again = make_dermoscopy_image((240, 320), 3, lesion_fraction=fraction)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(mask, mask_again)


def test_dermoscopy_lesion_fraction_changes_the_size_only_where_asked():
    small = make_dermoscopy_image((240, 320), 5, lesion_fraction=0.1)[1]
    large = make_dermoscopy_image((240, 320), 5, lesion_fraction=0.5)[1]
    assert (small & ~large).mean() < 0.01  # the same lesion, grown: the small one lies inside the large
    drawn, drawn_mask = make_dermoscopy_image((240, 320), 5)
    default, default_mask = make_dermoscopy_image((240, 320), 5, lesion_fraction=None)
    np.testing.assert_array_equal(drawn, default)  # None keeps the drawn size (and every byte)
    np.testing.assert_array_equal(drawn_mask, default_mask)
    for bad in (0, 1, -0.2, 1.5):
        with pytest.raises(ValueError, match="lesion_fraction"):
            make_dermoscopy_image((64, 64), 0, lesion_fraction=bad)
