"""Dataset layouts: discovery, one scan reporting every problem, seeded splits, manifests."""

import os

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from glmed.data.layouts import (
    DatasetError,
    LayoutError,
    discover,
    find_deepglobe,
    find_inria,
    find_isic,
    make_split,
    read_manifest,
    scan_dataset,
    split_counts,
    write_manifest,
)
from glmed.io import index_to_deepglobe

TRAIN_IN, TRAIN_GT = "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"


def _isic(root, count=4, size=(24, 32)):
    (root / TRAIN_IN).mkdir(parents=True)
    (root / TRAIN_GT).mkdir()
    (root / TRAIN_IN / "ATTRIBUTION.txt").write_text("credits")
    rng = np.random.default_rng(0)
    for index in range(count):
        image_id = f"ISIC_{index:07d}"
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(root / TRAIN_IN / f"{image_id}.jpg")
        mask = np.zeros(size, np.uint8)
        mask[4:12, 5:20] = 255
        Image.fromarray(mask).save(root / TRAIN_GT / f"{image_id}_segmentation.png")
    return root


def test_isic_pairs_are_found_and_scanned(tmp_path):
    table = find_isic(_isic(tmp_path))
    assert list(table.columns) == ["image_id", "image_path", "label_path"]
    assert table["image_id"].tolist() == [f"ISIC_{i:07d}" for i in range(4)]
    assert table["label_path"].str.endswith("_segmentation.png").all()
    scanned = scan_dataset(table, "binary")
    assert scanned[["height", "width", "channels"]].values.tolist() == [[24, 32, 3]] * 4
    pd.testing.assert_frame_equal(discover(tmp_path, "isic"), table)


def test_scan_reports_every_problem_at_once(tmp_path):
    root = _isic(tmp_path, count=8)
    images, masks = root / TRAIN_IN, root / TRAIN_GT
    os.remove(masks / "ISIC_0000001_segmentation.png")  # image without its mask
    os.remove(images / "ISIC_0000002.jpg")  # mask without its image
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "ISIC_0000003_segmentation.png")  # size mismatch
    Image.fromarray(np.full((24, 32), 128, np.uint8)).save(masks / "ISIC_0000004_segmentation.png")  # bad values
    data = (images / "ISIC_0000005.jpg").read_bytes()
    (images / "ISIC_0000005.jpg").write_bytes(data[: len(data) // 2])  # truncated image
    (masks / "ISIC_0000006_segmentation.png").write_bytes(b"not a png at all")  # corrupt mask
    with pytest.raises(DatasetError) as caught:
        scan_dataset(find_isic(root), "binary")
    problems = {os.path.basename(p.path): p.message for p in caught.value.problems}
    assert len(caught.value.problems) == 6, caught.value
    assert "missing mask for image" in problems["ISIC_0000001_segmentation.png"]
    assert problems["ISIC_0000002.jpg"] == "missing image"
    assert "(10, 10) but its image" in problems["ISIC_0000003_segmentation.png"]
    assert "found values 128" in problems["ISIC_0000004_segmentation.png"]
    assert "truncated" in problems["ISIC_0000005.jpg"]
    assert "unknown image format" in problems["ISIC_0000006_segmentation.png"]
    message = str(caught.value)
    assert message.startswith("6 problem(s)") and all(name in message for name in problems)


def test_scan_reports_images_smaller_than_a_patch(tmp_path):
    table = find_isic(_isic(tmp_path, count=2))
    with pytest.raises(DatasetError, match="smaller than one patch of 508 px"):
        scan_dataset(table, "binary", min_size=508)


def test_wrong_layouts_say_what_was_expected_and_found(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(LayoutError, match=r"expected the ISIC 2018 training folders .*found \['images/'\]"):
        find_isic(tmp_path)
    with pytest.raises(LayoutError, match=r"expected the Inria Aerial folders \['images', 'gt'\]"):
        find_inria(tmp_path)
    with pytest.raises(LayoutError, match="expected files named <id>_sat.jpg"):
        find_deepglobe(tmp_path)
    with pytest.raises(LayoutError, match="dataset folder not found"):
        find_isic(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="choose one of"):
        discover(tmp_path, "cityscapes")


def test_isic_without_ground_truth_when_labels_are_not_required(tmp_path):
    root = tmp_path
    (root / "ISIC2018_Task1-2_Test_Input").mkdir()
    Image.new("RGB", (8, 8)).save(root / "ISIC2018_Task1-2_Test_Input" / "ISIC_0012345.jpg")
    table = find_isic(root, subset="test", labels=False)
    assert table["image_id"].tolist() == ["ISIC_0012345"] and table["label_path"].isna().all()
    scan_dataset(table, label_kind=None)


def test_deepglobe_colour_masks(tmp_path):
    folder = tmp_path / "land_train"
    folder.mkdir()
    index = (np.indices((16, 16)).sum(axis=0) % 7).astype(np.uint8)
    for image_id in ("119", "855"):
        Image.new("RGB", (16, 16), (90, 120, 60)).save(folder / f"{image_id}_sat.jpg")
        Image.fromarray(index_to_deepglobe(index)).save(folder / f"{image_id}_mask.png")
    table = find_deepglobe(tmp_path)
    assert table["image_id"].tolist() == ["119", "855"]
    scan_dataset(table, "deepglobe")
    red = index_to_deepglobe(index)
    red[0, 0] = (255, 0, 0)
    Image.fromarray(red).save(folder / "855_mask.png")
    with pytest.raises(
        DatasetError, match=r"855_mask.png: colours outside the DeepGlobe palette.*\(255, 0, 0\) \(1 px\)"
    ):
        scan_dataset(table, "deepglobe")


def test_inria_under_its_train_folder(tmp_path):
    base = tmp_path / "AerialImageDataset" / "train"
    (base / "images").mkdir(parents=True)
    (base / "gt").mkdir()
    for town in ("austin1", "vienna2"):
        tifffile.imwrite(base / "images" / f"{town}.tif", np.zeros((20, 30, 3), np.uint8), photometric="rgb")
        tifffile.imwrite(base / "gt" / f"{town}.tif", np.full((20, 30), 255, np.uint8))
    table = find_inria(tmp_path / "AerialImageDataset")
    assert table["image_id"].tolist() == ["austin1", "vienna2"]
    assert scan_dataset(table, "binary")["width"].tolist() == [30, 30]


def test_split_counts_scale_the_papers_sizes():
    assert split_counts(2596, (2077, 260, 259)) == (2077, 260, 259)
    assert split_counts(26, (2077, 260, 259)) == (21, 3, 2)
    assert sum(split_counts(803, (455, 142, 206))) == 803
    assert split_counts(3, (126, 27, 27)) == (1, 1, 1)
    with pytest.raises(ValueError, match="three non-negative counts"):
        split_counts(10, (1, 2))


def test_make_split_is_deterministic_and_order_independent():
    table = pd.DataFrame({"image_id": [f"ISIC_{i:07d}" for i in range(26)], "image_path": "x", "label_path": "y"})
    split = make_split(table, "isic", seed=3)
    assert split["split"].value_counts().to_dict() == {"train": 21, "val": 3, "test": 2}
    shuffled = table.sample(frac=1.0, random_state=1)
    pd.testing.assert_frame_equal(make_split(shuffled, "isic", seed=3), split)
    assert not make_split(table, "isic", seed=4)["split"].equals(split["split"])
    with pytest.raises(ValueError, match="unique"):
        make_split(pd.concat([table, table.iloc[:1]]), "isic")


def test_manifest_round_trip_with_relative_paths(tmp_path):
    table = make_split(find_isic(_isic(tmp_path / "data", count=3)), (1, 1, 1))
    table.loc[0, "label_path"] = None
    manifest = tmp_path / "data" / "split.csv"
    write_manifest(table, manifest)
    stored = pd.read_csv(manifest)
    assert not stored["image_path"].str.startswith("/").any()
    back = read_manifest(manifest)
    assert back["image_path"].tolist() == [str(p) for p in table["image_path"]]
    assert back["label_path"].iloc[0] is None and back["split"].tolist() == table["split"].tolist()
    (tmp_path / "bad.csv").write_text("id,path\n1,a\n")
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['image_id', 'image_path', 'label_path'\]"):
        read_manifest(tmp_path / "bad.csv")
