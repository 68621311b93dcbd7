import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose, RandFlipd, RandRotate90d

from glmed.data.normalize import Normalization, to_model_input
from glmed.data.samples import (
    collate_global_local,
    global_local_sample,
    iter_patch_batches,
    jitter_box,
    read_patches,
    resize_label,
    tile_box,
)
from glmed.data.transforms import GlobalLocal, LabelToIndexd, RandGlobalLocald
from glmed.geometry import map_box
from glmed.io.base import ArrayReader

RAW = Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0)  # float32 pixels, unchanged


def coverage(boxes, size):
    counts = np.zeros(size, dtype=np.int32)
    for r0, c0, r1, c1 in boxes:
        counts[r0:r1, c0:c1] += 1
    return counts


class CountingReader(ArrayReader):
    """An ArrayReader that records every region read at level 0."""

    def __init__(self, array):
        super().__init__(array)
        self.reads = []

    def _read_level(self, level, box):
        if level == 0:
            self.reads.append(tuple(box))
        return super()._read_level(level, box)


@pytest.mark.parametrize("size", [(4499, 6748), (509, 509), (1000, 50), (50, 1000), (300, 300)])
def test_grid_covers_awkward_sizes_with_full_patches_inside_the_image(size):
    boxes = GlobalLocal(patch_size=508, overlap=50).boxes(size)
    assert boxes.dtype == np.int64 and boxes.shape[1] == 4
    assert (coverage(boxes, size) >= 1).all()
    heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (heights == min(508, size[0])).all() and (widths == min(508, size[1])).all()
    assert boxes.min() >= 0 and boxes[:, 2].max() == size[0] and boxes[:, 3].max() == size[1]


def test_large_image_grid_has_about_150_patches():
    # REFERENCES.md: a 6748×4499 image takes about 150 patches of 508 with 50 px overlap.
    assert 140 <= len(GlobalLocal().boxes((4499, 6748))) <= 170


@pytest.mark.parametrize("size, global_size", [((4499, 6748), (508, 508)), ((509, 509), (508, 508)),
                                               ((1000, 50), (508, 508)), ((777, 333), (64, 48))])
def test_boxes_round_trip_exactly_through_fractions_and_the_global_map(size, global_size):
    boxes = GlobalLocal().boxes(size)
    image = ArrayReader(np.zeros(size + (1,), np.uint8))
    sample = global_local_sample(image, boxes, global_size=global_size, normalization=None, with_patches=False)
    fractions = sample["boxes_normalized"].numpy()
    assert sample["boxes_normalized"].dtype == torch.float64
    scale = np.array([size[0], size[1], size[0], size[1]], float)
    np.testing.assert_array_equal(np.rint(fractions * scale).astype(np.int64), boxes)
    assert np.abs(fractions * scale - boxes).max() < 1e-9
    for box, fraction in zip(boxes, fractions):
        on_global = map_box(tuple(box), size, global_size)
        np.testing.assert_allclose(on_global, fraction * np.array(global_size * 2), atol=1e-9)
        back = map_box(on_global, global_size, size)
        assert tuple(int(round(v)) for v in back) == tuple(box)
        assert np.abs(np.array(back) - box).max() < 1e-9


def test_patches_are_the_image_pixels_at_their_boxes_and_labels_match():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (509, 300, 3), dtype=np.uint8)
    label = rng.integers(0, 3, (509, 300), dtype=np.uint8)
    boxes = GlobalLocal(patch_size=128, overlap=16).boxes((509, 300))
    sample = global_local_sample(image, boxes, label, global_size=64, normalization=RAW)
    for box, patch, patch_label in zip(boxes, sample["patches"], sample["patch_labels"]):
        r0, c0, r1, c1 = box
        np.testing.assert_array_equal(patch.numpy(), np.moveaxis(image[r0:r1, c0:c1], -1, 0).astype(np.float32))
        np.testing.assert_array_equal(patch_label.numpy(), label[r0:r1, c0:c1])
    assert sample["global_image"].shape == (3, 64, 64) and sample["global_label"].shape == (64, 64)
    assert sample["global_label"].dtype == torch.int64 and sample["patch_labels"].dtype == torch.int64
    assert sample["image_size"].tolist() == [509, 300]


def test_global_label_is_nearest_neighbour_and_keeps_class_values():
    label = np.zeros((90, 90), np.int64)
    label[:, 30:60] = 3
    label[:, 60:] = 5
    small = resize_label(label, (3, 9))
    np.testing.assert_array_equal(small, np.repeat([[0, 0, 0, 3, 3, 3, 5, 5, 5]], 3, axis=0))
    rng = np.random.default_rng(1)
    noisy = rng.choice([0, 3, 5], size=(301, 257))
    assert set(np.unique(resize_label(ArrayReader(noisy), (64, 40)))) <= {0, 3, 5}


def test_patch_batches_read_each_region_once_in_order():
    image = np.arange(200 * 150 * 2, dtype=np.uint16).reshape(200, 150, 2)
    reader = CountingReader(image)
    boxes = GlobalLocal(patch_size=64, overlap=8).boxes((200, 150))
    batches = list(iter_patch_batches(reader, boxes, batch_size=4))
    assert [b.start for b in batches] == list(range(0, len(boxes), 4))
    assert [len(b.pixels) for b in batches[:-1]] == [4] * (len(batches) - 1) and 1 <= len(batches[-1].pixels) <= 4
    assert sorted(reader.reads) == sorted(tuple(map(int, b)) for b in boxes)
    for batch in batches:
        assert batch.pixels.dtype == np.uint16
        for box, pixels in zip(batch.boxes, batch.pixels):
            np.testing.assert_array_equal(pixels, image[box[0] : box[2], box[1] : box[3]])
    model_input = to_model_input(batches[0].pixels, Normalization((0, 0), (1, 1), 1.0, channels=2))
    assert model_input.shape == (4, 2, 64, 64)
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_patch_batches(reader, boxes, 0))
    with pytest.raises(ValueError, match="one size"):
        read_patches(reader, [(0, 0, 10, 10), (0, 0, 20, 20)])


@pytest.mark.parametrize("box", [(100, 200, 900, 1500), (10, 10, 20, 30), (0, 0, 1000, 2000),
                                 (990, 1990, 1000, 2000), (400, 0, 420, 2000)])
def test_tile_box_stays_inside_the_box_and_covers_it(box):
    size, patch = (1000, 2000), 256
    grid = tile_box(size, box, patch, 32)
    boxes = grid.boxes
    counts = coverage(boxes, size)
    r0, c0, r1, c1 = box
    assert (counts[r0:r1, c0:c1] >= 1).all()
    assert grid.patch_size == (256, 256)
    assert boxes.min() >= 0 and boxes[:, 2].max() <= size[0] and boxes[:, 3].max() <= size[1]
    # Tiled region: the box itself, or the box grown to one patch about its centre.
    region = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
    for axis in range(2):
        extent = region[axis + 2] - region[axis]
        assert extent == max(box[axis + 2] - box[axis], patch)
        assert region[axis] <= box[axis] and region[axis + 2] >= box[axis + 2]
    assert counts.sum() == counts[region[0] : region[2], region[1] : region[3]].sum()


def test_tile_box_on_an_image_smaller_than_a_patch_uses_the_image():
    grid = tile_box((100, 60), (10, 10, 20, 20), 508, 50)
    assert grid.boxes.tolist() == [[0, 0, 100, 60]]
    with pytest.raises(ValueError, match="box"):
        tile_box((100, 60), (10, 10, 10, 20), 508, 50)


def test_jitter_box_moves_edges_within_the_fraction_and_stays_in_the_image():
    rng = np.random.default_rng(0)
    box, size = (100, 200, 300, 600), (400, 700)
    assert jitter_box(box, size, 0.2, [0, 0, 0, 0]) == box
    assert jitter_box(box, size, 0.1, [-1, -1, 1, 1]) == (80, 160, 320, 640)
    for _ in range(200):
        moved = jitter_box(box, size, 0.3, rng.uniform(-1, 1, 4))
        assert 0 <= moved[0] < moved[2] <= size[0] and 0 <= moved[1] < moved[3] <= size[1]
        assert abs(moved[0] - box[0]) <= 60 and abs(moved[3] - box[3]) <= 120
    crossed = jitter_box((0, 0, 5, 5), (5, 5), 10.0, [1, 1, -1, -1])  # edges pushed past each other
    assert 0 <= crossed[0] < crossed[2] <= 5 and 0 <= crossed[1] < crossed[3] <= 5


def test_collate_concatenates_patches_and_says_which_image_each_came_from():
    image = np.zeros((120, 200, 3), np.uint8)
    samples = []
    for count in (3, 1, 2):
        boxes = GlobalLocal(patch_size=48, overlap=8).boxes((120, 200))[:count]
        sample = global_local_sample(image, boxes, np.zeros((120, 200), np.uint8), global_size=32)
        sample["name"] = f"image{count}"
        samples.append(sample)
    batch = collate_global_local(samples)
    assert batch["global_image"].shape == (3, 3, 32, 32) and batch["global_label"].shape == (3, 32, 32)
    assert batch["patches"].shape == (6, 3, 48, 48) and batch["patch_labels"].shape == (6, 48, 48)
    assert batch["boxes"].shape == (6, 4) and batch["boxes_normalized"].shape == (6, 4)
    assert batch["image_index"].tolist() == [0, 0, 0, 1, 2, 2]
    assert batch["name"] == ["image3", "image1", "image2"]
    small = global_local_sample(np.zeros((30, 30, 3), np.uint8), [(0, 0, 30, 30)], global_size=32)
    with pytest.raises(ValueError, match="patch shapes"):
        collate_global_local([samples[0], small])
    with pytest.raises(ValueError, match="empty"):
        collate_global_local([])


def _labelled_images(count):
    """Images whose label is readable from the pixels (red > 127), so a transform applied to
    one but not the other shows up."""
    rng = np.random.default_rng(7)
    items = []
    for index in range(count):
        height, width = 96 + 8 * index, 130 - 6 * index
        red = rng.integers(0, 2, (height // 8 + 1, width // 8 + 1)).repeat(8, 0).repeat(8, 1)[:height, :width]
        image = rng.integers(0, 100, (3, height, width), dtype=np.uint8)
        image[0] = np.where(red == 1, 200, 30)
        items.append({"image": image, "label": (red * 255).astype(np.uint8)[None], "id": index})
    return items


@pytest.mark.parametrize("dataset_type", [Dataset, CacheDataset])
def test_dataloader_with_workers_keeps_image_and_label_together(dataset_type):
    transforms = Compose([
        LabelToIndexd("label", values=(0, 255)),
        RandFlipd(("image", "label"), prob=0.5, spatial_axis=1),
        RandRotate90d(("image", "label"), prob=0.5),
        RandGlobalLocald(("image", "label"), num_patches=3, global_size=32, patch_size=40, overlap=8,
                         normalization=RAW, num_classes=2),
    ])
    extra = {"cache_rate": 1.0, "num_workers": 1, "progress": False} if dataset_type is CacheDataset else {}
    dataset = dataset_type(_labelled_images(6), transform=transforms, **extra)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_global_local)
    seen = []
    for batch in loader:
        assert batch["global_image"].shape == (2, 3, 32, 32)
        assert batch["patches"].shape == (6, 3, 40, 40) and batch["image_index"].tolist() == [0, 0, 0, 1, 1, 1]
        assert "image" not in batch and "label" not in batch
        torch.testing.assert_close(batch["patch_labels"], (batch["patches"][:, 0] > 127).long())
        red, global_label = batch["global_image"][:, 0], batch["global_label"]
        assert (global_label[red > 190] == 1).all() and (global_label[red < 40] == 0).all()
        assert (red > 190).any() and (red < 40).any()
        seen += batch["id"]
    assert sorted(seen) == list(range(6))
