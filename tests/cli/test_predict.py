"""``glmed predict``: a checkpoint and an image in, a mask file out, clear errors otherwise."""

import numpy as np
import pytest
import torch
from PIL import Image

import glmed
from glmed.cli import main
from glmed.inference.provenance import RECORD_NAME, record_path
from glmed.io import open_image
from glmed.models.checkpoint import save_checkpoint
from glmed.models.glnet import GLNet

SIZES = dict(fpn_channels=16, global_size=64, patch_size=64, overlap=8)


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    model = GLNet(2, "resnet18", "g2l", **SIZES)
    save_checkpoint(tmp_path / "best.pt", model)
    image = np.random.default_rng(0).integers(0, 256, (130, 170, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "ISIC_0000001.png")
    return model.eval(), tmp_path / "best.pt", tmp_path / "ISIC_0000001.png"


@pytest.mark.parametrize("name", ["mask.png", "mask.tif"])
def test_predict_writes_the_mask_predict_gives(tmp_path, trained, capsys, name):
    model, checkpoint, image = trained
    out = tmp_path / name
    tissue = ["--no-tissue-mask"] if name.endswith(".tif") else []  # not a slide: no glass to skip
    assert main(["predict", str(checkpoint), str(image), str(out), "--quiet", "--device", "cpu", *tissue]) == 0
    expected = glmed.predict(model, image).mask
    with open_image(out) as reader:
        written = reader.read((0, 0, *reader.size))[..., 0]
    np.testing.assert_array_equal(written, expected * 255)  # 0/255 in both: what viewers show
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["mask.png", "mask.tif"])
@pytest.mark.parametrize("flags, expected", [([], {}), (["--amp", "bf16", "--channels-last"],
                                                       {"amp": "bf16", "channels_last": True}),
                                          (["--refine", "uncertain", "--margin", "0.25"],
                                           {"refine": "uncertain", "margin": 0.25}),
                                          (["--refine", "box"], {"refine": "box"}),
                                          (["--tta", "dihedral"], {"tta": "dihedral"})])
def test_amp_channels_last_and_refine_reach_predict(tmp_path, trained, monkeypatch, name, flags, expected):
    import glmed.inference.inferer as inferer
    import glmed.inference.slide as slide

    _, checkpoint, image = trained
    calls = []

    def spy(real):
        def call(*args, **kwargs):
            calls.append(kwargs)
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(inferer, "predict", spy(inferer.predict))
    monkeypatch.setattr(slide, "predict_to_tiff", spy(slide.predict_to_tiff))
    assert main(["predict", str(checkpoint), str(image), str(tmp_path / name), "--quiet", "--device", "cpu",
                 *flags]) == 0
    assert len(calls) == 1
    options = ("amp", "channels_last", "refine", "margin", "tta")
    assert {key: calls[0][key] for key in options if key in calls[0]} == expected


@pytest.mark.parametrize("flags, tissue", [([], None), (["--no-tissue-mask"], False), (["--tissue-mask"], True)])
def test_the_tissue_mask_is_on_for_slides_unless_switched_off(tmp_path, trained, monkeypatch, capsys, flags,
                                                                   tissue):
    import glmed.inference.slide as slide

    _, checkpoint, image = trained
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    real = slide.predict_to_tiff
    monkeypatch.setattr(slide, "predict_to_tiff", spy)
    assert main(["predict", str(checkpoint), str(image), str(tmp_path / "mask.tif"), "--quiet", "--device", "cpu",
                 *flags]) == 0
    assert [call["tissue"] for call in calls] == [tissue]
    out = capsys.readouterr().out
    # 130 x 170 random pixels, at the 0.25 µm/px assumed without a resolution, hold no piece of tissue
    # as large as the detector keeps (5000 µm²): every patch is glass
    assert ("glass only, written as background" in out) == bool(tissue) and ("of glass skipped" in out) == bool(tissue)
    assert ("no tissue mask" in out) == (tissue is None)  # a PNG says no µm/px: not taken for a slide, and told so


def test_no_tissue_mask_is_refused_for_png_masks(tmp_path, trained, capsys):
    _, checkpoint, image = trained
    assert main(["predict", str(checkpoint), str(image), str(tmp_path / "mask.png"), "--no-tissue-mask"]) == 1
    assert _one_line_error(capsys).startswith("glmed predict: --no-tissue-mask applies to .tif masks (slides)")


@pytest.mark.parametrize("case, message", [
    ("missing checkpoint", "checkpoint not found"),
    ("bad image", "ISIC_0000001.png"),
    ("bad suffix", "must end in .tif, .tiff or .png"),
    ("missing folder", "does not exist"),
])
def test_bad_inputs_end_with_a_message_and_status_1(tmp_path, trained, capsys, case, message):
    _, checkpoint, image = trained
    out = tmp_path / "mask.tif"
    if case == "missing checkpoint":
        checkpoint = tmp_path / "nope.pt"
    elif case == "bad image":
        image.write_bytes(b"not an image")
    elif case == "bad suffix":
        out = tmp_path / "mask.jpg"
    else:
        out = tmp_path / "missing" / "mask.tif"
    assert main(["predict", str(checkpoint), str(image), str(out), "--quiet", "--device", "cpu"]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_becomes_a_scorable_isic_submission_and_resumes(tmp_path, trained, capsys):
    model, checkpoint, _ = trained
    images, truth = tmp_path / "images", tmp_path / "truth"
    images.mkdir(), truth.mkdir()
    for index in range(3):
        pixels = np.random.default_rng(index).integers(0, 256, (90, 120, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"ISIC_{index:07d}.jpg")
        Image.fromarray(np.full((90, 120), 255, np.uint8)).save(truth / f"ISIC_{index:07d}_segmentation.png")
    (images / "LICENSE.txt").write_text("CC-0")
    submission = tmp_path / "submission"
    assert main(["predict", str(checkpoint), str(images), str(submission), "--quiet", "--device", "cpu"]) == 0
    # adapted: the folder also holds a provenance record beside each mask (dot-files the scorer ignores) and the
    # run's summary.csv (which the scorer skips too)
    assert sorted(p.name for p in submission.iterdir() if not p.name.startswith(".")) == [
        f"ISIC_{i:07d}_segmentation.png" for i in range(3)] + ["summary.csv"]
    assert all(record_path(submission / f"ISIC_{i:07d}_segmentation.png").is_file() for i in range(3))
    expected = glmed.predict(model, images / "ISIC_0000001.jpg").mask * 255
    np.testing.assert_array_equal(np.asarray(Image.open(submission / "ISIC_0000001_segmentation.png")), expected)
    assert len(glmed.score_submission(truth, submission)) == 3

    (submission / "ISIC_0000002_segmentation.png").unlink()
    capsys.readouterr()
    assert main(["predict", str(checkpoint), str(images), str(submission), "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "kept 2 mask(s)" in printed and printed.count("wrote ") == 1 and "ISIC_0000002" in printed


def test_a_folder_run_reports_bad_images_and_finishes_the_others(tmp_path, trained, capsys):
    _, checkpoint, _ = trained
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((70, 70, 3), np.uint8)).save(images / "a.png")
    (images / "b.png").write_bytes(b"truncated")
    out = tmp_path / "masks"
    assert (
        main(["predict", str(checkpoint), str(images), str(out), "--quiet", "--device", "cpu", "--format", "tif"])
        == 1
    )
    error = capsys.readouterr().err
    assert "1 of 2 image(s) failed" in error and "b.png" in error
    # adapted: + the records (dot-files) and the summary
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a_mask.tif", "summary.csv"]


# --- options, devices and checkpoints: one line naming the option or file, before any work ----------------

def _images(folder, names=("ISIC_0000000.jpg", "ISIC_0000001.jpg", "ISIC_0000002.jpg"), shape=(70, 90)):
    folder.mkdir(exist_ok=True)
    for index, name in enumerate(names):
        pixels = np.random.default_rng(index).integers(0, 256, (*shape, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
    return folder


def _predict(*args):
    return main(["predict", *map(str, args), "--quiet"])


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"glmed {glmed.__version__}\n"


def test_cuda_on_a_machine_without_it_is_named_as_the_problem(tmp_path, trained, capsys, monkeypatch):
    _, checkpoint, image = trained
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _predict(checkpoint, image, tmp_path / "mask.png", "--device", "cuda") == 1
    error = _one_line_error(capsys)
    assert error.startswith("glmed predict: --device cuda: this machine has no CUDA device (torch ")
    assert error.endswith("; use --device cpu") and "checkpoint" not in error
    assert not (tmp_path / "mask.png").exists()


@pytest.mark.parametrize("device", ["gpu", "cuda:x"])
def test_a_malformed_device_is_named(tmp_path, trained, capsys, device):
    _, checkpoint, image = trained
    assert _predict(checkpoint, image, tmp_path / "mask.png", "--device", device) == 1
    error = _one_line_error(capsys)
    assert error == f"glmed predict: --device {device}: not a device; use --device cpu, cuda or cuda:N"


@pytest.mark.parametrize("content", ["text", "truncated"])
def test_a_garbage_checkpoint_is_one_line_without_unsafe_advice(tmp_path, trained, capsys, content):
    _, checkpoint, image = trained
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"hello\n" if content == "text" else checkpoint.read_bytes()[:20_000])
    assert _predict(bad, image, tmp_path / "mask.png", "--device", "cpu") == 1
    error = _one_line_error(capsys)
    assert error.startswith(f"glmed predict: {bad}: not a glmed checkpoint (") and "weights_only" not in error


@pytest.mark.parametrize("value", ["-1", "0"])
def test_a_bad_batch_size_is_refused_before_any_work(tmp_path, trained, capsys, monkeypatch, value):
    _, checkpoint, _ = trained
    images = _images(tmp_path / "images")
    monkeypatch.setattr("glmed.models.checkpoint.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert _predict(checkpoint, images, tmp_path / "masks", "--device", "cpu", "--batch-size", value) == 1
    assert _one_line_error(capsys) == f"glmed predict: --batch-size must be at least 1, got {value}"
    assert not (tmp_path / "masks").exists()


def test_a_bad_tile_is_refused_before_any_work(tmp_path, trained, capsys):
    _, checkpoint, image = trained
    assert _predict(checkpoint, image, tmp_path / "mask.tif", "--device", "cpu", "--tile", "100") == 1
    assert _one_line_error(capsys) == "glmed predict: --tile must be a positive multiple of 16, got 100"


@pytest.mark.parametrize("flags, message", [
    (["--refine", "uncertain", "--margin", "1.5"], "--margin must be in (0, 1), got 1.5"),
    (["--refine", "uncertain", "--margin", "0"], "--margin must be in (0, 1), got 0.0"),
    (["--margin", "0.2"], "--margin applies only with --refine uncertain (it says which patches to skip)"),
    (["--refine", "box", "--margin", "0.2"], "--margin applies only with --refine uncertain"),
])
def test_a_bad_margin_is_refused_before_any_work(tmp_path, trained, capsys, monkeypatch, flags, message):
    _, checkpoint, image = trained
    monkeypatch.setattr("glmed.models.checkpoint.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert _predict(checkpoint, image, tmp_path / "mask.png", "--device", "cpu", *flags) == 1
    assert _one_line_error(capsys).startswith(f"glmed predict: {message}")


def test_a_refined_run_says_how_many_patches_took_the_global_answer(tmp_path, trained, capsys):
    model, _, image = trained
    with torch.no_grad():  # a global branch sure of the background everywhere: every patch is skipped
        model.global_head.weight.zero_()
        model.global_head.bias.copy_(torch.tensor([8.0, 0.0]))
    save_checkpoint(tmp_path / "sure.pt", model)
    out = tmp_path / "mask.png"
    assert _predict(tmp_path / "sure.pt", image, out, "--device", "cpu", "--refine", "uncertain", "--margin",
                    "0.4") == 0
    expected = glmed.predict(model, image, refine="uncertain", margin=0.4)
    assert expected.patches_skipped == 9 and not expected.mask.any()
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected.mask * 255)
    printed = capsys.readouterr().out
    assert (f"segmented with {expected.patches} patches ({expected.patches_skipped} more took the global "
            "branch's answer)") in printed
    assert f"note: refined {expected.patches} of " in printed


def test_every_failure_in_a_folder_run_names_its_image(tmp_path, trained, capsys, monkeypatch):
    import glmed.inference.inferer as inferer

    _, checkpoint, _ = trained
    images = _images(tmp_path / "images")
    real = inferer.predict

    def predict(model, image, **options):
        if "0001" in str(image):
            raise ValueError("the network cannot take this image")  # a message without the file's name
        return real(model, image, **options)

    monkeypatch.setattr(inferer, "predict", predict)
    assert _predict(checkpoint, images, tmp_path / "masks", "--device", "cpu") == 1
    err = capsys.readouterr().err
    assert "1 of 3 image(s) failed" in err
    assert f"{images / 'ISIC_0000001.jpg'}: the network cannot take this image" in err


def test_predict_to_tiff_refuses_a_name_that_is_not_a_tiff_before_any_inference(tmp_path, trained, monkeypatch):
    model, _, image = trained
    monkeypatch.setattr(model, "local_features", lambda *a, **k: pytest.fail("inference ran"))
    for name in ("x.png", "x.tif.png", "x"):
        with pytest.raises(ValueError, match=f"{tmp_path / name}: predict_to_tiff writes a pyramidal TIFF"):
            glmed.predict_to_tiff(model, image, tmp_path / name)
        assert not (tmp_path / name).exists()


# --- folder runs: what is skipped, and which checkpoint made the masks ------------------------------------

def test_a_folder_run_skips_hidden_files_and_masks_and_says_so(tmp_path, trained, capsys):
    _, checkpoint, _ = trained
    images = _images(tmp_path / "images", ("ISIC_0000000.jpg", "photo.png", "ISIC_0000000_segmentation.png",
                                           "photo_mask.png", "._ISIC_0000000.jpg"))
    (images / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    out = tmp_path / "masks"
    assert _predict(checkpoint, images, out, "--device", "cpu") == 0
    printed = capsys.readouterr().out
    assert f"skipped 2 hidden file(s) in {images}: .DS_Store, ._ISIC_0000000.jpg" in printed
    assert (f"skipped 2 file(s) in {images} named like masks, not images: ISIC_0000000_segmentation.png, "
            "photo_mask.png") in printed
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "ISIC_0000000_segmentation.png", "photo_mask.png", "summary.csv"]  # adapted: + the run's summary


def test_a_folder_of_masks_only_says_what_was_skipped(tmp_path, trained, capsys):
    _, checkpoint, _ = trained
    images = _images(tmp_path / "images", ("ISIC_0000000_segmentation.png",))
    assert _predict(checkpoint, images, tmp_path / "masks", "--device", "cpu") == 1
    error = _one_line_error(capsys)
    assert "no images" in error and "skipped 1 file(s)" in error and "ISIC_0000000_segmentation.png" in error


def _mtimes(folder):
    # the masks: the run's records (dot-files) and summary.csv are rewritten by every run
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()
            if not p.name.startswith(".") and p.name != "summary.csv"}


def _other_checkpoint(tmp_path):
    torch.manual_seed(1)
    other = GLNet(2, "resnet18", "g2l", **SIZES)
    save_checkpoint(tmp_path / "other.pt", other)
    return other.eval(), tmp_path / "other.pt"


def test_a_rerun_with_the_same_checkpoint_and_options_keeps_the_masks(tmp_path, trained, capsys):
    _, checkpoint, _ = trained
    images, out = _images(tmp_path / "images"), tmp_path / "masks"
    assert _predict(checkpoint, images, out, "--device", "cpu") == 0
    before = _mtimes(out)
    copy = tmp_path / "copy of best.pt"  # the same bytes elsewhere: the same checkpoint
    copy.write_bytes(checkpoint.read_bytes())
    capsys.readouterr()
    assert _predict(copy, images, out, "--device", "cpu") == 0
    printed = capsys.readouterr().out
    assert f"kept 3 mask(s) made by this checkpoint with these options in {out}" in printed
    assert "wrote" not in printed and _mtimes(out) == before


def test_another_checkpoint_recomputes_every_mask_and_says_what_changed(tmp_path, trained, capsys):
    _, checkpoint, _ = trained
    images, out = _images(tmp_path / "images"), tmp_path / "masks"
    assert _predict(checkpoint, images, out, "--device", "cpu") == 0
    other, other_path = _other_checkpoint(tmp_path)
    capsys.readouterr()
    assert _predict(other_path, images, out, "--device", "cpu") == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("recomputing"))
    assert line.startswith(f"recomputing the 3 mask(s) already in {out}, made by another run: checkpoint {checkpoint}")
    assert f"→ {other_path} (sha256 " in line and "kept" not in printed and printed.count("wrote ") == 3
    expected = glmed.predict(other, images / "ISIC_0000001.jpg").mask * 255
    np.testing.assert_array_equal(np.asarray(Image.open(out / "ISIC_0000001_segmentation.png")), expected)


@pytest.mark.parametrize("option, change", [(["--batch-size", "2"], "batch_size 4 → 2"),
                                            (["--channels-last"], "channels_last None → True"),
                                            (["--refine", "uncertain"], "refine None → 'uncertain'"),
                                            (["--format", "tif"], None)])
def test_changed_options_recompute_every_mask(tmp_path, trained, capsys, option, change):
    _, checkpoint, _ = trained
    images, out = _images(tmp_path / "images"), tmp_path / "masks"
    assert _predict(checkpoint, images, out, "--device", "cpu", "--format", "tif") == 0
    before = _mtimes(out)
    capsys.readouterr()
    if option[0] == "--format":  # the same masks as TIFFs with another tile side
        option, change = ["--format", "tif", "--tile", "64"], "tile 512 → 64"
    assert _predict(checkpoint, images, out, "--device", "cpu", "--format", "tif", *option) == 0
    printed = capsys.readouterr().out
    assert "made by another run" in printed and change in printed and printed.count("wrote ") == 3
    assert all(_mtimes(out)[name] != before[name] for name in before)


def test_refine_box_keeps_the_masks_of_a_run_without_it(tmp_path, trained, capsys):
    _, checkpoint, _ = trained
    images, out = _images(tmp_path / "images"), tmp_path / "masks"
    assert _predict(checkpoint, images, out, "--device", "cpu") == 0  # a record without refine, as older runs
    capsys.readouterr()
    assert _predict(checkpoint, images, out, "--device", "cpu", "--refine", "box") == 0
    assert "kept 3 mask(s)" in capsys.readouterr().out
    assert _predict(checkpoint, images, out, "--device", "cpu", "--refine", "uncertain", "--margin", "0.3") == 0
    assert "refine None → 'uncertain'" in capsys.readouterr().out
    assert _predict(checkpoint, images, out, "--device", "cpu", "--refine", "uncertain", "--margin", "0.2") == 0
    assert "margin 0.3 → 0.2" in capsys.readouterr().out


def test_masks_without_a_record_are_recomputed(tmp_path, trained, capsys):
    _, checkpoint, _ = trained
    images, out = _images(tmp_path / "images"), tmp_path / "masks"
    assert _predict(checkpoint, images, out, "--device", "cpu") == 0
    for record in out.glob(f".*{RECORD_NAME}"):
        record.unlink()  # masks from an older glmed, or copied in by hand
    capsys.readouterr()
    assert _predict(checkpoint, images, out, "--device", "cpu") == 0
    printed = capsys.readouterr().out
    assert f"recomputing the 3 mask(s) already in {out} with no record beside them (.NAME{RECORD_NAME})" in printed
    assert printed.count("wrote ") == 3


def test_a_killed_run_with_another_checkpoint_resumes_without_keeping_the_old_masks(tmp_path, trained, capsys,
                                                                                   monkeypatch):
    import glmed.inference.inferer as inferer

    _, checkpoint, _ = trained
    images, out = _images(tmp_path / "images"), tmp_path / "masks"
    assert _predict(checkpoint, images, out, "--device", "cpu") == 0
    _, other_path = _other_checkpoint(tmp_path)
    real, calls = inferer.predict, []

    def killed_at_the_second_image(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(inferer, "predict", killed_at_the_second_image)
    with pytest.raises(KeyboardInterrupt):
        _predict(other_path, images, out, "--device", "cpu")
    monkeypatch.setattr(inferer, "predict", real)
    capsys.readouterr()
    assert _predict(other_path, images, out, "--device", "cpu") == 0
    printed = capsys.readouterr().out
    assert f"kept 1 mask(s) made by this checkpoint with these options in {out}" in printed
    # the killed image's old record went first (it must not outlive the mask), the last one's is the old run's
    assert f"recomputing the 1 mask(s) already in {out} with no record beside them" in printed
    assert f"recomputing the 1 mask(s) already in {out}, made by another run: checkpoint" in printed
    assert printed.count("wrote ") == 2 and "ISIC_0000000" not in printed.split("kept")[1]


def test_an_image_that_fails_does_not_keep_another_runs_mask(tmp_path, trained, capsys):
    _, checkpoint, _ = trained
    images, out = _images(tmp_path / "images"), tmp_path / "masks"
    assert _predict(checkpoint, images, out, "--device", "cpu") == 0
    (images / "ISIC_0000002.jpg").write_bytes(b"truncated")
    _, other_path = _other_checkpoint(tmp_path)
    assert _predict(other_path, images, out, "--device", "cpu") == 1
    err = capsys.readouterr().err
    assert "ISIC_0000002.jpg" in err and "removed ISIC_0000002_segmentation.png, which an earlier run had left" in err
    assert not (out / "ISIC_0000002_segmentation.png").exists()


def test_no_resume_recomputes_and_the_record_never_reaches_the_scorer(tmp_path, trained, capsys):
    _, checkpoint, _ = trained
    images, out, truth = _images(tmp_path / "images"), tmp_path / "masks", tmp_path / "truth"
    truth.mkdir()
    for index in range(3):
        Image.fromarray(np.full((70, 90), 255, np.uint8)).save(truth / f"ISIC_{index:07d}_segmentation.png")
    assert _predict(checkpoint, images, out, "--device", "cpu") == 0
    capsys.readouterr()
    assert _predict(checkpoint, images, out, "--device", "cpu", "--no-resume") == 0
    printed = capsys.readouterr().out
    assert f"recomputing the 3 mask(s) already in {out} (--no-resume)" in printed and printed.count("wrote ") == 3
    assert record_path(out / "ISIC_0000000_segmentation.png").is_file()
    assert main(["score", str(truth), str(out)]) == 0
    captured = capsys.readouterr()
    assert "3 images" in captured.out and captured.err == ""


def test_folder_progress_written_to_a_log_has_no_carriage_returns(tmp_path, trained, capsys):
    _, checkpoint, _ = trained
    images = _images(tmp_path / "images")
    assert main(["predict", str(checkpoint), str(images), str(tmp_path / "masks"), "--device", "cpu"]) == 0
    assert "\r" not in capsys.readouterr().err  # pytest's capture is not a terminal, like a log file


def test_max_value_reads_float_images_of_0_to_255(tmp_path, trained, capsys):
    import tifffile

    model, checkpoint, image = trained
    pixels = np.asarray(Image.open(image))
    tifffile.imwrite(tmp_path / "float255.tif", pixels.astype(np.float32), photometric="rgb")
    out = tmp_path / "mask.png"
    assert main(["predict", str(checkpoint), str(tmp_path / "float255.tif"), str(out), "--quiet"]) == 1
    assert "--max-value" in capsys.readouterr().err  # the error names the option that fixes it
    assert main(["predict", str(checkpoint), str(tmp_path / "float255.tif"), str(out), "--quiet",
                 "--max-value", "255"]) == 0
    written = np.asarray(Image.open(out)) // 255
    assert (written == glmed.predict(model, pixels).mask).mean() > 0.99
    assert main(["predict", str(checkpoint), str(image), str(out), "--max-value", "0"]) == 1
    assert "--max-value must be positive" in capsys.readouterr().err


# --- ISIC finishing ------------------------------------------------------------------------------------------

def test_finish_writes_the_finished_mask_and_says_what_changed(tmp_path, trained, capsys):
    model, checkpoint, image = trained
    out = tmp_path / "mask.png"
    assert _predict(checkpoint, image, out, "--device", "cpu", "--finish", "--keep-regions-above", "40") == 0
    expected = glmed.predict(model, image, finish="lesion", keep_regions_above=40)
    assert (expected.mask != glmed.predict(model, image).mask).any()  # finishing changed this mask
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected.mask * 255)
    printed = capsys.readouterr().out
    assert all(f"note: {note}" in printed for note in expected.notes if note.startswith("ISIC finishing"))


@pytest.mark.parametrize("flags, out, message", [
    (["--finish"], "mask.tif", "--finish is for lesion masks written as PNG: a .tif output streams a slide"),
    (["--keep-regions-above", "5"], "mask.png", "--keep-regions-above applies only with --finish"),
    (["--finish", "--keep-regions-above", "-1"], "mask.png", "--keep-regions-above must be a pixel count >= 0"),
])
def test_finish_options_that_cannot_apply_are_refused_before_any_work(tmp_path, trained, capsys, monkeypatch,
                                                                      flags, out, message):
    _, checkpoint, image = trained
    monkeypatch.setattr("glmed.models.checkpoint.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert _predict(checkpoint, image, tmp_path / out, "--device", "cpu", *flags) == 1
    assert _one_line_error(capsys).startswith(f"glmed predict: {message}")


def test_finish_is_refused_for_a_folder_of_tiffs_and_a_multi_class_checkpoint(tmp_path, trained, capsys):
    _, checkpoint, image = trained
    images = _images(tmp_path / "images")
    assert _predict(checkpoint, images, tmp_path / "masks", "--device", "cpu", "--format", "tif", "--finish") == 1
    assert "--finish is for lesion masks written as PNG" in _one_line_error(capsys)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "three.pt", GLNet(3, "resnet18", "g2l", **SIZES))
    assert _predict(tmp_path / "three.pt", image, tmp_path / "mask.png", "--device", "cpu", "--finish") == 1
    assert "has 3 classes, whose other classes it would erase: drop --finish" in _one_line_error(capsys)


def test_tta_is_noted_and_recorded_for_a_folder_run(tmp_path, trained, capsys):
    _, checkpoint, _ = trained
    images = _images(tmp_path / "images", names=("ISIC_0000000.jpg",))
    masks = tmp_path / "masks"
    assert _predict(checkpoint, images, masks, "--device", "cpu", "--tta", "flips") == 0
    assert "note: test-time augmentation (flips): probabilities averaged over 3 views" in capsys.readouterr().out
    assert _predict(checkpoint, images, masks, "--device", "cpu") == 0  # without it, the mask is recomputed
    assert "recomputing the 1 mask(s) already in" in capsys.readouterr().out
