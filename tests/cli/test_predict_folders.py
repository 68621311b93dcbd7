"""``glmed predict`` on a folder of slides: summary.csv, per-slide records, --part and torchrun shares."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from glmed.cli import main
from glmed.cli.parts import parse_part, share, this_part
from glmed.data.synthetic.slides import write_synthetic_slide
from glmed.inference.provenance import RunRecord
from glmed.io import open_image
from glmed.models.checkpoint import save_checkpoint
from glmed.models.glnet import GLNet

SIZES = dict(fpn_channels=16, global_size=64, patch_size=64, overlap=8)
MPP = 4.0  # coarse, so the small tissue pieces of these tiny slides exceed the clean-up's 5000 µm²


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "best.pt", GLNet(2, "resnet18", "g2l", **SIZES))
    return tmp_path / "best.pt"


@pytest.fixture
def slides(tmp_path):
    """Two small generated slides (an Aperio SVS and a generic TIFF) and a broken one."""
    folder = tmp_path / "slides"
    folder.mkdir()
    write_synthetic_slide(folder / "a.svs", (128, 160), seed=1, kind="aperio", tile=64, mpp=MPP)
    write_synthetic_slide(folder / "b.tif", (150, 130), seed=2, kind="tiff", tile=64, mpp=MPP)
    (folder / "c.tif").write_bytes(b"II*\x00" + b"\x00" * 60)  # a TIFF header and nothing else
    return folder


def predict(*args):
    return main(["predict", *map(str, args), "--quiet", "--device", "cpu"])


def read_summary(folder):
    with open(folder / "summary.csv", newline="") as handle:
        return {row["slide"]: row for row in csv.DictReader(handle)}


def foreground(mask_path):
    with open_image(mask_path) as reader:
        return int((reader.read((0, 0, *reader.size))[..., 0] == 255).sum())


def record_options_say_tissue(mask):
    """Whether the folder's record of ``mask`` names the tissue mask, so masks made without it are recomputed."""
    record = RunRecord.load(mask)
    return record is not None and str(record.options.get("tissue_mask", "")).startswith("skip glass")


def test_a_folder_run_sums_up_every_slide_the_broken_one_included(tmp_path, checkpoint, slides, capsys):
    out = tmp_path / "masks"
    assert predict(checkpoint, slides, out, "--format", "tif", "--geojson", "--thumbnail") == 1
    assert "1 of 3 image(s) failed" in capsys.readouterr().err
    rows = read_summary(out)
    assert list(rows) == ["a.svs", "b.tif", "c.tif"]
    assert rows["c.tif"]["status"] == "failed" and "c.tif" in rows["c.tif"]["error"]
    assert rows["c.tif"]["height"] == "" and rows["c.tif"]["mask"] == "c_mask.tif"
    for name, size in (("a", (128, 160)), ("b", (150, 130))):
        row = rows[f"{name}.{'svs' if name == 'a' else 'tif'}"]
        assert row["status"] == "done" and row["error"] == ""
        assert (int(row["height"]), int(row["width"])) == size and float(row["mpp"]) == pytest.approx(MPP)
        pixels = foreground(out / f"{name}_mask.tif")
        assert int(row["foreground_area_px"]) == pixels
        assert float(row["foreground_area_um2"]) == pytest.approx(pixels * MPP**2, abs=0.1)
        assert int(row["patches"]) > 0 and float(row["seconds"]) > 0
        assert int(row["patches_glass"]) >= 0 and record_options_say_tissue(out / f"{name}_mask.tif")
        assert float(row["tissue_area_um2"]) == pytest.approx(float(row["tissue_area_px"]) * MPP**2, rel=1e-3)
        assert 0 < float(row["tissue_area_px"]) < size[0] * size[1]
        assert (out / f"{name}_mask.geojson").is_file() and (out / f"{name}_mask_thumbnail.png").is_file()
        record = RunRecord.load(out / f"{name}_mask.tif")
        assert record is not None and record.options["geojson"] == "" and record.summary["status"] == "done"


def test_no_tissue_mask_is_a_change_of_options_that_recomputes(tmp_path, checkpoint, slides, capsys):
    (slides / "c.tif").unlink()
    out = tmp_path / "masks"
    assert predict(checkpoint, slides, out, "--format", "tif") == 0
    capsys.readouterr()
    assert predict(checkpoint, slides, out, "--format", "tif", "--no-tissue-mask") == 0
    printed = capsys.readouterr().out
    assert "recomputing the 2 mask(s)" in printed and "tissue_mask" in printed
    rows = read_summary(out)
    assert all(row["status"] == "done" and row["patches_glass"] == "" for row in rows.values())


def test_a_rerun_skips_finished_slides_and_changed_options_recompute(tmp_path, checkpoint, slides, capsys):
    (slides / "c.tif").unlink()
    out = tmp_path / "masks"
    assert predict(checkpoint, slides, out, "--format", "tif") == 0
    first = read_summary(out)
    written = {name: (out / name).stat().st_mtime_ns for name in ("a_mask.tif", "b_mask.tif")}
    capsys.readouterr()

    assert predict(checkpoint, slides, out, "--format", "tif") == 0
    printed = capsys.readouterr().out
    assert "kept 2 mask(s) made by this checkpoint with these options" in printed and "wrote " + str(out) not in printed
    again = read_summary(out)
    assert {row["status"] for row in again.values()} == {"skipped"}
    for name in first:  # the numbers of the run that made them
        assert {k: v for k, v in again[name].items() if k != "status"} == {
            k: v for k, v in first[name].items() if k != "status"}
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written

    assert predict(checkpoint, slides, out, "--format", "tif", "--batch-size", "2") == 0
    printed = capsys.readouterr().out
    assert "recomputing the 2 mask(s) already in" in printed and "batch_size 4 → 2" in printed
    assert {row["status"] for row in read_summary(out).values()} == {"done"}
    assert all((out / name).stat().st_mtime_ns != written[name] for name in written)


@pytest.fixture
def five_images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(5):
        pixels = np.random.default_rng(index).integers(0, 256, (64, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index}.png")
    return folder


def written_by(printed):
    return {line.split(": ")[1].split()[0] for line in printed.splitlines() if line.startswith("wrote ")
            and "summary.csv" not in line}


@pytest.mark.parametrize("parts", [2, 3])
def test_parts_split_a_folder_without_overlap_and_the_last_summary_has_every_image(
        tmp_path, checkpoint, five_images, capsys, parts):
    out = tmp_path / "masks"
    shares = []
    for k in range(1, parts + 1):
        assert predict(checkpoint, five_images, out, "--part", f"{k}/{parts}") == 0
        printed = capsys.readouterr().out
        assert f"part {k}/{parts} (from --part)" in printed
        shares.append(written_by(printed))
        statuses = [row["status"] for row in read_summary(out).values()]
        assert statuses.count("done") == sum(len(s) for s in shares) and len(statuses) == 5
        assert statuses.count("pending") == 5 - statuses.count("done")
    assert sorted(set().union(*shares)) == [f"img{i}.png" for i in range(5)]
    assert sum(len(s) for s in shares) == 5  # disjoint
    assert sorted(len(s) for s in shares)[-1] - sorted(len(s) for s in shares)[0] <= 1


def test_torchrun_rank_and_world_size_give_the_share_unless_part_is_given(
        tmp_path, checkpoint, five_images, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert predict(checkpoint, five_images, tmp_path / "masks", "--no-resume") == 0
    printed = capsys.readouterr().out
    assert "part 2/2 (from torchrun's RANK and WORLD_SIZE)" in printed
    assert written_by(printed) == {"img1.png", "img3.png"}
    assert predict(checkpoint, five_images, tmp_path / "masks", "--part", "1/2") == 0
    assert written_by(capsys.readouterr().out) == {"img0.png", "img2.png", "img4.png"}


@pytest.mark.parametrize("value", ["0/2", "3/2", "1/0", "half", "1/2/3"])
def test_a_bad_part_is_refused_before_any_work(tmp_path, checkpoint, five_images, capsys, monkeypatch, value):
    monkeypatch.setattr("glmed.models.checkpoint.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert predict(checkpoint, five_images, tmp_path / "masks", "--part", value) == 1
    assert f"--part must be K/N with 1 <= K <= N (the K-th of N shares), got {value!r}" in capsys.readouterr().err


def test_shares_are_disjoint_and_cover_everything():
    items = list(range(11))
    for n in range(1, 6):
        shares = [share(items, (k, n)) for k in range(1, n + 1)]
        assert sorted(sum(shares, [])) == items
    assert parse_part(" 2 / 3 ") == (2, 3)
    assert this_part(None, {}) is None and this_part(None, {"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert this_part(None, {"RANK": "2", "WORLD_SIZE": "4"}) == ((3, 4), "torchrun's RANK and WORLD_SIZE")
    assert this_part("1/4", {"RANK": "2", "WORLD_SIZE": "4"}) == ((1, 4), "--part")
    with pytest.raises(ValueError, match="RANK='4'"):
        this_part(None, {"RANK": "4", "WORLD_SIZE": "4"})


def test_output_flags_need_tiff_masks(tmp_path, checkpoint, five_images, capsys):
    assert predict(checkpoint, five_images, tmp_path / "masks", "--geojson") == 1
    assert "--geojson need TIFF masks: add --format tif" in capsys.readouterr().err
    assert predict(checkpoint, five_images, tmp_path / "masks", "--format", "tif", "--thumbnail", "x.png") == 1
    assert "--thumbnail take no PATH with a folder" in capsys.readouterr().err
    assert predict(checkpoint, five_images / "img0.png", tmp_path / "m.png", "--geojson", tmp_path / "m.geojson") == 1
    assert "need a .tif mask" in capsys.readouterr().err
    assert predict(checkpoint, five_images / "img0.png", tmp_path / "m.tif", "--classes", "background,a,b") == 1
    assert "--classes names 3 classes, the checkpoint's model has 2" in capsys.readouterr().err


def test_mpp_segments_at_that_resolution_and_the_summary_keeps_the_slides(tmp_path, checkpoint, slides, capsys):
    (slides / "c.tif").unlink()
    out = tmp_path / "masks"
    assert predict(checkpoint, slides, out, "--format", "tif", "--mpp", str(2 * MPP), "--probabilities") == 0
    rows = read_summary(out)
    for name, slide, size in (("a", "a.svs", (128, 160)), ("b", "b.tif", (150, 130))):
        row = rows[slide]
        assert (int(row["height"]), int(row["width"])) == size and float(row["mpp"]) == pytest.approx(MPP)
        with open_image(out / f"{name}_mask.tif") as mask:  # half the slide's pixels on each axis
            assert mask.size == (round(size[0] / 2), round(size[1] / 2))
            mask_pixels = int((mask.read((0, 0, *mask.size))[..., 0] == 255).sum())
        # areas in the slide's level-0 pixels (4 per mask pixel) and in µm²
        assert int(row["foreground_area_px"]) == pytest.approx(4 * mask_pixels, abs=2)
        assert float(row["foreground_area_um2"]) == pytest.approx(mask_pixels * (2 * MPP) ** 2, rel=0.02)
        assert RunRecord.load(out / f"{name}_mask.tif").options["mpp"] == 2 * MPP
        with open_image(out / f"{name}_mask_probabilities.tif") as sure:  # beside its mask, the mask's size
            assert sure.size == mask.size
    capsys.readouterr()
    assert predict(checkpoint, slides, out, "--format", "tif", "--mpp", str(2 * MPP), "--probabilities") == 0
    assert "kept 2 mask(s)" in capsys.readouterr().out
    assert predict(checkpoint, slides, out, "--format", "tif") == 0
    printed = capsys.readouterr().out
    assert f"mpp {2 * MPP!r} → None" in printed and "probabilities '' → None" in printed


def test_mpp_needs_tiff_masks_and_a_positive_value(tmp_path, checkpoint, five_images, capsys):
    assert predict(checkpoint, five_images, tmp_path / "masks", "--mpp", "0.5") == 1
    assert "--mpp segments slides, whose masks are .tif: add --format tif" in capsys.readouterr().err
    assert predict(checkpoint, five_images / "img0.png", tmp_path / "m.tif", "--mpp", "0") == 1
    assert "--mpp is µm per pixel, a positive number" in capsys.readouterr().err
    assert predict(checkpoint, five_images / "img0.png", tmp_path / "m.tif", "--mpp", "0.5") == 1
    assert "img0.png: mpp=0.5 asks for a resolution, but the file does not say" in capsys.readouterr().err


def test_a_folder_run_shows_a_bar_over_slides_and_one_within_each(tmp_path, checkpoint, slides, monkeypatch):
    import glmed.progress

    (slides / "c.tif").unlink()
    bars = []
    real = glmed.progress.progress_bar

    def recording(iterable=None, **options):
        bars.append((options.get("desc"), options.get("unit")))
        return real(iterable, **options)

    monkeypatch.setattr(glmed.progress, "progress_bar", recording)
    assert main(["predict", str(checkpoint), str(slides), str(tmp_path / "masks"), "--format", "tif",
                 "--device", "cpu"]) == 0
    assert bars[0] == (f"segmenting {slides}", "image")  # over the slides, first
    within = [desc for desc, unit in bars[1:] if unit == "batch"]
    assert any(desc.endswith("a.svs: segmenting patches") for desc in within)
    assert any(desc.endswith("b.tif: segmenting patches") for desc in within)
