import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandFlipd
from PIL import Image

from glmed.data.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalization, to_model_input
from glmed.data.samples import resize_label
from glmed.data.synthetic import write_deepglobe_dataset, write_isic_dataset
from glmed.data.transforms import (
    CropBoxd,
    GlobalLocald,
    LabelToIndex,
    LabelToIndexd,
    RandForegroundBoxd,
    RandGlobalLocald,
    ReadImaged,
)
from glmed.geometry import coarse_to_fine_boxes
from glmed.io.base import ArrayReader
from glmed.io.labels import DEEPGLOBE_PALETTE

RAW = Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0)
SMALL = dict(global_size=32, patch_size=48, overlap=8)


@pytest.fixture(scope="module")
def isic_files(tmp_path_factory):
    root = write_isic_dataset(tmp_path_factory.mktemp("isic"), n_images=2, sizes=[(120, 170), (90, 130)], seed=3)
    return [
        {"image": str(root / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{i:07d}.jpg"),
         "label": str(root / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{i:07d}_segmentation.png")}
        for i in range(2)
    ]


def _image_and_label(height=150, width=110, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (3, height, width), dtype=np.uint8)
    label = np.zeros((1, height, width), np.uint8)
    label[0, 30:80, 20:70] = 1
    return image, label


# -- normalisation --------------------------------------------------------------------


def test_to_model_input_scales_and_standardises_per_channel():
    pixels = np.array([[[0, 128, 255]]], np.uint8)  # 1×1×3
    out = to_model_input(pixels)
    expected = (np.array([0, 128, 255]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert out.shape == (3, 1, 1) and out.dtype == torch.float32
    np.testing.assert_allclose(out[:, 0, 0].numpy(), expected, rtol=1e-6)
    # MONAI loads 8-bit files as float32 0-255: the same result once the scale is stated ...
    torch.testing.assert_close(to_model_input(pixels.astype(np.float32), Normalization(max_value=255)), out)
    # ... and floats in [0, 1] (scikit-image's img_as_float) are read as such, by default
    torch.testing.assert_close(to_model_input(pixels.astype(np.float32) / 255), out)


def test_to_model_input_handles_grey_batches_channel_first_and_alpha():
    grey = np.full((5, 7), 100, np.uint8)
    out = to_model_input(grey)
    assert out.shape == (3, 5, 7)
    torch.testing.assert_close(out, to_model_input(np.repeat(grey[..., None], 3, axis=2)))
    batch = np.random.default_rng(0).integers(0, 256, (4, 6, 8, 3), dtype=np.uint8)
    out = to_model_input(batch)
    assert out.shape == (4, 3, 6, 8)
    torch.testing.assert_close(to_model_input(np.moveaxis(batch, -1, 1), channel_axis=1), out)
    torch.testing.assert_close(to_model_input(batch[0].transpose(2, 0, 1), channel_axis=0), out[0])
    rgba = np.concatenate([batch[0], np.full((6, 8, 1), 255, np.uint8)], axis=2)
    torch.testing.assert_close(to_model_input(rgba), out[0])
    with pytest.raises(ValueError, match="2 channels"):
        to_model_input(np.zeros((6, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="one value per channel"):
        Normalization(mean=(0.5,))
    sixteen = Normalization((0.0,), (1.0,), 65535.0, channels=1)
    assert to_model_input(np.full((2, 2), 65535, np.uint16), sixteen).max() == 1.0


# -- labels ---------------------------------------------------------------------------


def test_label_to_index_maps_values_and_colours_and_refuses_strays():
    mask = np.array([[0, 255], [255, 0]], np.uint8)
    np.testing.assert_array_equal(LabelToIndex((0, 255))(mask), [[[0, 1], [1, 0]]])
    colours = DEEPGLOBE_PALETTE[np.array([[0, 4], [6, 1]])].transpose(2, 0, 1)  # 3×2×2
    np.testing.assert_array_equal(LabelToIndex(DEEPGLOBE_PALETTE.tolist())(colours), [[[0, 4], [6, 1]]])
    meta = MetaTensor(torch.tensor(mask[None], dtype=torch.float32))
    out = LabelToIndexd("seg", values=(0, 255))({"seg": meta})["seg"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.int64 and out.tolist() == [[[0, 1], [1, 0]]]
    with pytest.raises(ValueError, match=r"'seg' holds values \[128\] .* \[0, 255\]"):
        LabelToIndexd("seg", values=(0, 255))({"seg": np.array([[0, 128]], np.uint8)})
    with pytest.raises(ValueError, match="3 channel"):
        LabelToIndex(DEEPGLOBE_PALETTE.tolist())(mask)
    with pytest.raises(ValueError, match="distinct"):
        LabelToIndex((0, 0))


@pytest.mark.parametrize("label, match", [
    (np.full((1, 150, 110), 255, np.uint8), r"'seg' holds values \[255\].*\[0, 2\)"),
    (np.zeros((3, 150, 110), np.uint8), r"'seg' must be a single-channel"),
    (np.full((1, 150, 110), 0.5, np.float32), r"'seg' is not an integer class map.*0\.5"),
    (np.full((1, 150, 110), -1, np.int64), r"'seg' holds values \[-1\]"),
])
def test_labels_that_are_not_class_maps_are_refused_naming_the_key(label, match):
    image, _ = _image_and_label()
    with pytest.raises(ValueError, match=match):
        GlobalLocald(("img", "seg"), num_classes=2, **SMALL)({"img": image, "seg": label})


# -- the global-local sample ----------------------------------------------------------


def test_monai_compose_with_flips_moves_image_and_label_together(isic_files):
    load = [LoadImaged(("image", "label"), reader="PILReader", reverse_indexing=False),
            EnsureChannelFirstd(("image", "label")), LabelToIndexd("label", values=(0, 255))]
    flip = RandFlipd(("image", "label"), prob=1.0, spatial_axis=1)
    sample = Compose(load + [flip, GlobalLocald(normalization=RAW, num_classes=2, **SMALL)])(isic_files[0])
    image = np.asarray(Image.open(isic_files[0]["image"]))[:, ::-1]  # rows stay rows; columns flipped
    mask = (np.asarray(Image.open(isic_files[0]["label"])) == 255)[:, ::-1]
    assert sample["image_size"].tolist() == list(mask.shape)
    assert mask.any()
    for box, patch, patch_label in zip(sample["boxes"].numpy(), sample["patches"], sample["patch_labels"]):
        r0, c0, r1, c1 = box
        np.testing.assert_array_equal(patch.numpy(), np.moveaxis(image[r0:r1, c0:c1], -1, 0))
        np.testing.assert_array_equal(patch_label.numpy(), mask[r0:r1, c0:c1])
    np.testing.assert_array_equal(sample["global_label"].numpy(), resize_label(mask, (32, 32)))


def test_random_flips_draw_once_per_sample_for_image_and_label():
    image, _ = _image_and_label()
    label = (image[:1] > 127).astype(np.uint8)  # the label is readable from the image
    pipeline = Compose([RandFlipd(("image", "label"), prob=0.5, spatial_axis=0),
                        GlobalLocald(normalization=RAW, **SMALL)])
    first_rows = set()
    for seed in range(8):
        pipeline.set_random_state(seed)
        sample = pipeline({"image": image, "label": label})
        torch.testing.assert_close(sample["patch_labels"], (sample["patches"][:, 0] > 127).long())
        first_rows.add(float(sample["patches"][0, 0, 0, 0]))
    assert len(first_rows) == 2  # both outcomes of the flip were drawn


def test_global_locald_outputs_and_options():
    image, label = _image_and_label()
    sample = GlobalLocald(**SMALL)({"image": image, "label": label, "id": "a"})
    n = len(sample["boxes"])
    assert sample["global_image"].shape == (3, 32, 32) and sample["global_image"].dtype == torch.float32
    assert sample["patches"].shape == (n, 3, 48, 48) and sample["boxes"].dtype == torch.int64
    assert sample["boxes_normalized"].shape == (n, 4) and sample["global_label"].shape == (32, 32)
    assert "image" not in sample and "label" not in sample and sample["id"] == "a"
    kept = GlobalLocald(keep_source=True, **SMALL)({"image": image, "label": label})
    assert kept["image"] is image
    unlabelled = GlobalLocald(allow_missing_keys=True, with_patches=False, **SMALL)({"image": image})
    assert "patches" not in unlabelled and "global_label" not in unlabelled
    with pytest.raises(KeyError, match="allow_missing_keys"):
        GlobalLocald(**SMALL)({"image": image})
    from_reader = GlobalLocald(**SMALL)({"image": ArrayReader(np.moveaxis(image, 0, -1)), "label": label})
    for key in ("global_image", "patches", "boxes", "global_label", "patch_labels"):
        torch.testing.assert_close(from_reader[key], sample[key])


def test_rand_global_locald_draws_a_sorted_subset_of_the_grid():
    image, label = _image_and_label(300, 260)
    full = GlobalLocald(**SMALL)({"image": image, "label": label})
    subsets = []
    for seed in range(5):
        transform = RandGlobalLocald(num_patches=4, **SMALL).set_random_state(seed)
        sample = transform({"image": image, "label": label})
        rows = [np.flatnonzero((full["boxes"] == box).all(1).numpy())[0] for box in sample["boxes"]]
        assert len(rows) == 4 and rows == sorted(rows)
        torch.testing.assert_close(sample["patches"], full["patches"][rows])
        again = RandGlobalLocald(num_patches=4, **SMALL).set_random_state(seed)({"image": image, "label": label})
        torch.testing.assert_close(again["boxes"], sample["boxes"])
        subsets.append(tuple(rows))
    assert len(set(subsets)) > 1
    assert len(RandGlobalLocald(num_patches=999, **SMALL)({"image": image, "label": label})["boxes"]) == len(
        full["boxes"]
    )


# -- coarse-to-fine -------------------------------------------------------------------


def test_foreground_box_is_the_relaxed_box_then_jittered_inside_the_image():
    _, label = _image_and_label()
    # the label looked at on its own grid and never grown, to see relaxing and jitter alone
    full_res = {"global_size": label.shape[1:], "patch_size": 1}
    exact = RandForegroundBoxd(jitter=0.0, **full_res)({"label": label})["box"]
    assert exact.tolist() == list(coarse_to_fine_boxes(label[0], label.shape[1:], 1.0)[0])
    r0, c0, r1, c1 = exact
    assert r0 <= 30 and c0 <= 20 and r1 >= 80 and c1 >= 70
    boxes = set()
    for seed in range(20):
        box = RandForegroundBoxd(jitter=0.2, **full_res).set_random_state(seed)({"label": label})["box"]
        assert 0 <= box[0] < box[2] <= 150 and 0 <= box[1] < box[3] <= 110
        assert np.abs(box - exact).max() <= 0.2 * max(r1 - r0, c1 - c0) + 1
        boxes.add(tuple(box))
    assert len(boxes) > 10
    empty = RandForegroundBoxd(jitter=0.0)({"label": np.zeros((1, 40, 50), np.uint8)})["box"]
    assert empty.tolist() == [0, 0, 40, 50]


def test_coarse_to_fine_pipeline_tiles_inside_the_box_or_crops_to_it():
    image, label = _image_and_label(300, 260)
    box = np.array([100, 90, 170, 200])
    sample = GlobalLocald(box_key="box", **SMALL)({"image": image, "label": label, "box": box})
    boxes = sample["boxes"].numpy()
    assert (
        boxes[:, 0].min() == 100 and boxes[:, 2].max() == 170 and boxes[:, 1].min() == 90 and boxes[:, 3].max() == 200
    )
    cropped = CropBoxd(("image", "label"))({"image": image, "label": label, "box": box})
    np.testing.assert_array_equal(np.asarray(cropped["image"]), image[:, 100:170, 90:200])
    np.testing.assert_array_equal(np.asarray(cropped["label"]), label[:, 100:170, 90:200])
    assert cropped["box"] is box
    with pytest.raises(KeyError, match="RandForegroundBoxd"):
        CropBoxd("image")({"image": image})


# -- loading --------------------------------------------------------------------------


def test_read_imaged_keeps_rows_and_converts_masks(isic_files, tmp_path):
    sample = ReadImaged()(isic_files[1])
    monai = Compose([LoadImaged(("image", "label"), reader="PILReader", reverse_indexing=False),
                     EnsureChannelFirstd(("image", "label"))])(isic_files[1])
    assert sample["image"].dtype == np.uint8 and sample["image"].shape == (3, 90, 130)
    np.testing.assert_array_equal(sample["image"], np.asarray(monai["image"]).astype(np.uint8))
    np.testing.assert_array_equal(sample["label"], (np.asarray(monai["label"]) == 255).astype(np.uint8))
    root = write_deepglobe_dataset(tmp_path, n_images=1, size_range=(64, 64), seed=0)
    colours = np.asarray(Image.open(root / "train" / "100_mask.png"))
    classes = ReadImaged(label_kind="deepglobe")({"image": str(root / "train" / "100_sat.jpg"),
                                                  "label": str(root / "train" / "100_mask.png")})["label"]
    np.testing.assert_array_equal(DEEPGLOBE_PALETTE[classes[0]], colours)
