"""Tissue detection on generated slides: the fraction, the pieces and the patches of glass it finds."""

import importlib.util

import numpy as np
import pytest
from scipy import ndimage

from glmed.data.synthetic.slides import make_tissue_scene, write_synthetic_slide
from glmed.geometry import patch_grid
from glmed.io import ArrayReader, open_image
from glmed.io.tissue import TissueMask, detect_tissue

SIZE = (1536, 2048)
NO_OPENSLIDE = importlib.util.find_spec("openslide") is None
BACKENDS = ["tifffile", pytest.param("openslide", marks=pytest.mark.skipif(NO_OPENSLIDE, reason="needs openslide"))]


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tissue")
    options = dict(seed=7, tissue_fraction=0.3, pieces=3, mpp=1.0, tile=256)
    return {
        "aperio": write_synthetic_slide(folder / "slide.svs", SIZE, kind="aperio", **options),
        "tiff": write_synthetic_slide(folder / "slide.tif", SIZE, kind="tiff", **options),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["aperio", "tiff"])
def test_the_tissue_fraction_is_found(slides, kind, backend):
    slide = slides[kind]
    with open_image(slide.path, backend=backend) as reader:
        found = detect_tissue(reader, view_side=512)
    assert found.mask.shape == (384, 512) and found.image_size == SIZE
    assert found.fraction == pytest.approx(slide.tissue_fraction, abs=0.02)
    truth = slide.scene.tissue((0, 0, 384, 512), found.scale)
    assert (found.mask & truth).sum() / (found.mask | truth).sum() > 0.95  # intersection over union
    assert found.mpp == 1.0
    assert found.area_um2 == pytest.approx(found.area_px) == pytest.approx(found.fraction * SIZE[0] * SIZE[1])


def test_a_path_is_opened_and_closed(slides):
    found = detect_tissue(slides["aperio"].path, view_side=256)
    assert found.fraction == pytest.approx(0.3, abs=0.03)


def test_blank_glass_has_no_tissue(tmp_path):
    slide = write_synthetic_slide(tmp_path / "blank.svs", (512, 512), tissue_fraction=0.0, tile=128)
    found = detect_tissue(slide.path)
    assert found.fraction == 0.0 and found.component_boxes() == []
    assert not found.contains_tissue([(0, 0, 512, 512), (10, 10, 20, 20)]).any()
    assert found.area_um2 == 0.0


@pytest.mark.parametrize(
    "colour, tissue", [((255, 255, 255), False), ((236, 234, 240), False), ((0, 0, 0), False), ((220, 140, 190), True)]
)
def test_a_uniform_image_is_not_split(colour, tissue):
    image = np.broadcast_to(np.array(colour, np.uint8), (64, 96, 3)).copy()
    found = detect_tissue(image, min_tissue_um2=0)  # by default a 64 x 96 image is too small a piece to keep
    assert found.threshold is None
    assert found.mask.all() if tissue else not found.mask.any()


def test_noisy_glass_stays_glass():
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(236, 3, (300, 400, 3)), 0, 255).astype(np.uint8)
    found = detect_tissue(glass)
    assert found.fraction == 0.0 and found.threshold is not None and found.threshold >= 0.05


def test_small_pieces_are_dropped_and_small_holes_filled():
    image = np.full((400, 400, 3), 240, np.uint8)
    rows, cols = np.ogrid[:400, :400]
    image[(rows - 200) ** 2 + (cols - 200) ** 2 < 100**2] = (200, 120, 180)
    image[195:199, 195:199] = 240  # a 16 µm² hole
    image[20:23, 20:23] = (200, 120, 180)  # a 9 µm² speck
    kept = detect_tissue(image, mpp=1.0, min_tissue_um2=0, min_hole_um2=0)
    assert kept.mask[21, 21] and not kept.mask[196, 196]
    cleaned = detect_tissue(image, mpp=1.0, min_tissue_um2=100, min_hole_um2=100)
    assert not cleaned.mask[21, 21] and cleaned.mask[196, 196]
    assert ndimage.label(cleaned.mask)[1] == 1
    # at 0.1 µm/px the same pixels are 100 times smaller: 9 and 16 pixels are under 1 µm² then
    assert not detect_tissue(image, mpp=0.1, min_tissue_um2=0.5, min_hole_um2=0.5).mask[21, 21]


def test_patches_of_glass_are_found(slides):
    slide = slides["tiff"]
    found = detect_tissue(slide.path, view_side=512)
    grid = patch_grid(SIZE, (256, 256), 0)
    boxes = np.asarray(grid.boxes)
    fractions = found.box_fractions(boxes)
    truth = np.array([slide.scene.tissue((r0 // 4, c0 // 4, r1 // 4, c1 // 4), 4).mean() for r0, c0, r1, c1 in boxes])
    assert np.abs(fractions - truth).max() < 0.1
    has = found.contains_tissue(boxes)
    assert has[truth > 0.02].all()  # never skips a patch with tissue
    assert not has[truth == 0].all()  # and skips glass (a few patches touching tissue at the mask's resolution stay)
    assert (~has).sum() >= (truth == 0).sum() - 4
    assert found.contains_tissue(boxes, min_fraction=0.5).sum() == (fractions > 0.5).sum()


def test_a_patch_touching_one_tissue_pixel_of_the_mask_has_tissue():
    mask = np.zeros((10, 10), bool)
    mask[4, 6] = True
    found = TissueMask(mask, (100, 100))
    assert found.contains_tissue([(45, 69, 50, 75), (0, 0, 40, 100), (40, 65, 50, 70)]).tolist() == [True, False, True]
    assert found.box_fractions([(40, 60, 50, 70)])[0] == 1.0
    with pytest.raises(ValueError, match="outside the image"):
        found.box_fractions([(90, 90, 101, 100)])


def test_component_boxes_cover_every_piece(slides):
    slide = slides["aperio"]
    found = detect_tissue(slide.path, view_side=512)
    boxes = found.component_boxes()
    pieces = ndimage.label(found.mask, structure=np.ones((3, 3)))[1]
    assert 1 <= len(boxes) <= pieces
    covered = np.zeros(SIZE, bool)
    for r0, c0, r1, c1 in boxes:
        assert covered[r0:r1, c0:c1].sum() == 0  # disjoint
        covered[r0:r1, c0:c1] = True
    truth = slide.scene.tissue((0, 0, *SIZE))
    assert covered[truth].mean() > 0.999
    assert covered.mean() < 0.8  # boxes, not the whole slide
    with_margin = found.component_boxes(margin=64, min_size=(512, 512))
    for r0, c0, r1, c1 in with_margin:
        assert 0 <= r0 < r1 <= SIZE[0] and 0 <= c0 < c1 <= SIZE[1]
        assert r1 - r0 >= 512 and c1 - c0 >= 512


def test_separate_pieces_get_separate_boxes_and_overlapping_ones_merge():
    mask = np.zeros((100, 100), bool)
    mask[10:20, 10:20] = True
    mask[60:80, 50:90] = True
    mask[22:30, 22:30] = True  # 2 pixels from the first piece
    found = TissueMask(mask, (400, 400))
    assert found.component_boxes() == [(40, 40, 80, 80), (88, 88, 120, 120), (240, 200, 320, 360)]
    assert found.component_boxes(margin=8) == [(32, 32, 128, 128), (232, 192, 328, 368)]


def test_grey_images_are_refused_by_name():
    with pytest.raises(ValueError, match="grey.png: tissue detection needs colour"):
        detect_tissue(ArrayReader(np.zeros((32, 32), np.uint8), name="grey.png"))


def test_tissue_scene_at_the_mask_resolution_matches_within_a_few_percent():
    scene = make_tissue_scene((800, 1200), seed=11, tissue_fraction=0.45, pieces=5)
    found = detect_tissue(scene.render(), mpp=2.0, view_side=600)
    assert found.fraction == pytest.approx(0.45, abs=0.02)


def test_on_grid_marks_the_cells_of_a_global_view_holding_tissue():
    mask = np.zeros((10, 20), bool)
    mask[2, 3] = True  # one mask pixel: level-0 rows 20..29, columns 30..39 of a 100 x 200 slide
    found = TissueMask(mask, (100, 200))
    grid = found.on_grid((4, 5))  # cells of 25 x 40 level-0 pixels
    assert grid.shape == (4, 5) and np.argwhere(grid).tolist() == [[0, 0], [1, 0]]
    assert found.on_grid(mask.shape).tolist() == mask.tolist()
    with pytest.raises(ValueError, match="positive shape"):
        found.on_grid((0, 5))


def test_the_digest_changes_with_the_mask_alone():
    mask = np.zeros((10, 20), bool)
    mask[2, 3] = True
    same = TissueMask(mask.copy(), (100, 200))
    assert TissueMask(mask, (100, 200)).digest() == same.digest()
    moved = np.roll(mask, 1, axis=1)
    assert TissueMask(moved, (100, 200)).digest() != same.digest()
    assert TissueMask(mask, (100, 201)).digest() != same.digest()
