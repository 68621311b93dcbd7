"""Test-time augmentation: views of the image averaged as probabilities, patch by patch, for predict and slides."""

import itertools

import numpy as np
import pytest
import torch

import glmed
import glmed.inference.inferer as inferer_module
from glmed.inference.inferer import GlobalLocalInferer
from glmed.inference.merging import RowBandMerger
from glmed.inference.slide import _run_identity
from glmed.inference.tta import VIEWS, Dihedral, combined_scores
from glmed.io.open import open_as_reader
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.glnet import GLNet


def tiny(sharing, patch=64, overlap=0, global_size=64, classes=2):
    torch.manual_seed(0)
    return GLNet(classes, "resnet18", sharing, fpn_channels=8, global_size=global_size, patch_size=patch,
                 overlap=overlap).eval()


def image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- the transforms ----------------------------------------------------------------------------------------------

# The eight symmetries of the square, written with numpy independently of glmed: (image, box, inverse).
def _numpy_group():
    group = []
    for transpose, flip_rows, flip_cols in itertools.product((False, True), repeat=3):
        def forward(a, t=transpose, r=flip_rows, c=flip_cols):  # a: H×W×... (rows, columns first)
            a = np.swapaxes(a, 0, 1) if t else a
            a = a[::-1] if r else a
            return a[:, ::-1] if c else a

        def inverse(p, t=transpose, r=flip_rows, c=flip_cols):  # p: K×h×w probabilities
            p = p[:, :, ::-1] if c else p
            p = p[:, ::-1] if r else p
            return np.swapaxes(p, 1, 2) if t else p

        group.append((forward, inverse))
    return group


@pytest.mark.parametrize("view", VIEWS["dihedral"], ids=lambda v: v.name)
def test_each_view_maps_windows_and_undoes_itself(view):
    x = torch.arange(2 * 6 * 10, dtype=torch.float32).reshape(1, 2, 6, 10)
    seen = view.apply(x)
    torch.testing.assert_close(view.undo(seen), x, rtol=0, atol=0)
    assert seen.shape[-2:] == view.size((6, 10))
    # the window a box names in the image is the window its mapped box names in the transformed image
    box = torch.tensor([[2 / 6, 3 / 10, 5 / 6, 8 / 10]], dtype=torch.float64)
    r0, c0, r1, c1 = (view.boxes(box)[0] * torch.tensor([*seen.shape[-2:], *seen.shape[-2:]])).round().long().tolist()
    torch.testing.assert_close(view.undo(seen[..., r0:r1, c0:c1]), x[..., 2:5, 3:8], rtol=0, atol=0)


def test_the_modes_hold_the_views_they_promise():
    assert [v.name for v in VIEWS["flips"]] == ["identity", "horizontal flip", "vertical flip"]
    dihedral = VIEWS["dihedral"]
    assert len(set(dihedral)) == 8 and dihedral[0] == Dihedral()
    x = torch.rand(3, 5, 5)
    assert len({tuple(v.apply(x).flatten().tolist()) for v in dihedral}) == 8  # eight different images
    rotations = [torch.rot90(x, k, dims=(1, 2)) for k in range(4)]
    assert all(any(torch.equal(v.apply(x), r) for v in dihedral) for r in rotations)


def test_combined_scores_are_the_views_mean_probabilities_as_logits():
    logits = [torch.randn(3, 4, 5) for _ in range(3)]
    assert combined_scores(logits[:1]) is logits[0]
    mean = torch.stack([v.softmax(0) for v in logits]).mean(0)
    torch.testing.assert_close(combined_scores(logits).softmax(0), mean)


# --- predict: the same as predicting each view of the image and turning it back ----------------------------------

def _recording_merger(monkeypatch):
    """Record every patch's probabilities as the merger receives them: {box: K×p×p array}."""
    added = {}

    class Recording(RowBandMerger):
        def add(self, probabilities, box):
            added[tuple(int(v) for v in box)] = probabilities.numpy().copy()
            super().add(probabilities, box)

    monkeypatch.setattr(inferer_module, "RowBandMerger", Recording)
    return added


def _mapped_box(box, size, forward):
    """Where ``box`` of an image of ``size`` lands in ``forward``(image): its pixels, found by a marker."""
    marker = np.zeros(size, dtype=bool)
    marker[box[0] : box[2], box[1] : box[3]] = True
    rows, cols = np.nonzero(forward(marker))
    return rows.min(), cols.min(), rows.max() + 1, cols.max() + 1


@pytest.mark.parametrize("sharing, tta", [("g2l", "flips"), ("bidirectional", "flips"), ("local_only", "flips"),
                                          ("g2l", "dihedral")])
def test_each_patch_gets_the_mean_of_its_views_predicted_apart(monkeypatch, sharing, tta):
    # 128×128 at patch 64 and global 64: the patch grid is the same in every view (patches at 0 and 64 on each
    # axis) and the global view is an exact 2×2 block mean, so predicting a transformed image runs, patch by
    # patch, the computations test-time augmentation runs for that view.
    model = tiny(sharing)
    pixels = image(128, 128, seed=1)
    added = _recording_merger(monkeypatch)
    result = glmed.predict(model, pixels, tta=tta)
    with_tta = dict(added)
    group = _numpy_group() if tta == "dihedral" else [
        (lambda a: a, lambda p: p), (lambda a: a[:, ::-1], lambda p: p[:, :, ::-1]), (lambda a: a[::-1],
                                                                                       lambda p: p[:, ::-1])]
    apart = []
    for forward, _ in group:
        added.clear()
        glmed.predict(model, np.ascontiguousarray(forward(pixels)))
        apart.append(dict(added))
    assert len(with_tta) == 4
    for box, probabilities in with_tta.items():
        views = [inverse(seen[_mapped_box(box, (128, 128), forward)])
                 for (forward, inverse), seen in zip(group, apart, strict=True)]
        np.testing.assert_allclose(probabilities, np.mean(views, axis=0), atol=2e-5)
    assert result.patches == 4
    views = len(group)
    assert any(note.endswith(f"views ({', '.join(v.name for v in VIEWS[tta])}); global and local passes ×{views}")
               for note in result.notes)


def test_without_tta_nothing_changes(monkeypatch):
    model = tiny("bidirectional", overlap=8)
    pixels = image(100, 130)
    added = _recording_merger(monkeypatch)
    plain = glmed.predict(model, pixels)
    before = dict(added)
    added.clear()
    explicit = GlobalLocalInferer(tta=None)(model, pixels)
    assert before.keys() == added.keys()
    assert all(np.array_equal(before[box], added[box]) for box in before)
    np.testing.assert_array_equal(plain.mask, explicit.mask)
    assert not any("test-time augmentation" in note for note in plain.notes)


def test_the_global_only_mask_is_the_mean_of_the_views_global_probabilities():
    from glmed.data.normalize import to_model_input

    model = tiny("global_only")
    pixels = image(128, 128, seed=2)
    reader, _ = open_as_reader(pixels)
    view = to_model_input(reader.resized((64, 64)))[None]
    with torch.no_grad():  # balance the untrained head, so about half the pixels are foreground
        logits = model.global_logits(model.global_features(view), (64, 64))[0]
        model.global_head.bias[1] += (logits[0] - logits[1]).median()
    result = glmed.predict(model, pixels, tta="flips")
    with torch.no_grad():
        probabilities = [model.global_logits(model.global_features(x), (64, 64))[0].softmax(0)
                         for x in (view, view.flip(-1), view.flip(-2))]
    mean = (probabilities[0] + probabilities[1].flip(-1) + probabilities[2].flip(-2)) / 3
    upsampled = torch.nn.functional.interpolate(mean[None], size=(128, 128), mode="bilinear", align_corners=False)
    expected = upsampled[0].argmax(0).numpy()
    assert 0.2 < expected.mean() < 0.8
    assert (result.mask == expected).mean() > 0.999  # ties at the resampling aside
    assert (result.mask != glmed.predict(model, pixels).mask).any()  # the views changed something
    assert result.notes == ["test-time augmentation (flips): probabilities averaged over 3 views (identity, "
                            "horizontal flip, vertical flip); global passes ×3"]


# --- coarse-to-fine: boxes from the views' mean global probabilities ---------------------------------------------

def test_coarse_to_fine_boxes_come_from_the_mean_of_the_views(monkeypatch):
    torch.manual_seed(0)
    model = CoarseToFineGLNet(2, "resnet18", "g2l", fpn_channels=8, global_size=64, patch_size=32, overlap=0,
                              target_ratio=1.0).eval()
    lesion = torch.zeros(64, 64)
    lesion[24:40, 24:40] = 1  # in the middle: every flip sees it in place
    lesion[2:8, 2:8] = 1  # in a corner: only the unflipped view sees it there
    logits = torch.stack([-8 * lesion, 8 * lesion - 4 * (1 - lesion)])[None]
    monkeypatch.setattr(model, "global_logits", lambda maps, size: logits.clone())
    pixels = image(128, 128)
    plain = glmed.predict(model, pixels)
    averaged = glmed.predict(model, pixels, tta="flips")
    assert plain.coarse[4:16, 4:16].all() and plain.coarse[48:80, 48:80].all()
    assert not averaged.coarse[4:16, 4:16].any() and averaged.coarse[48:80, 48:80].all()
    def covers_the_corner(boxes):
        return any(r0 <= 8 < r1 and c0 <= 8 < c1 for r0, c0, r1, c1 in boxes)

    assert covers_the_corner(plain.boxes) and not covers_the_corner(averaged.boxes) and averaged.boxes


def test_uncertain_refinement_averages_the_skipped_patches_global_answers():
    model = tiny("g2l")
    with torch.no_grad():  # a global branch sure of the background everywhere: every patch is skipped
        model.global_head.weight.zero_()
        model.global_head.bias.copy_(torch.tensor([8.0, 0.0]))
    result = glmed.predict(model, image(128, 128), refine="uncertain", tta="flips")
    assert result.patches == 0 and result.patches_skipped == 4 and not result.mask.any()


# --- slides: the same mask, streamed; and a resumed run must have the same views -------------------------------

@pytest.mark.parametrize("tta", ["flips", "dihedral"])
def test_predict_to_tiff_with_tta_writes_the_mask_predict_gives(tmp_path, monkeypatch, tta):
    model = tiny("bidirectional", overlap=8)
    pixels = image(100, 130)
    added = _recording_merger(monkeypatch)
    glmed.predict(model, pixels, batch_size=3)
    margins = np.concatenate([np.log(p[0] / p[1]).ravel() for p in added.values()])
    with torch.no_grad():  # balance the untrained head, so the mask is about half foreground
        model.aggregate.bias[1] += float(np.median(margins))
    expected = glmed.predict(model, pixels, tta=tta, batch_size=3)
    written = glmed.predict_to_tiff(model, pixels, tmp_path / "mask.tif", tta=tta, batch_size=3, tissue=False)
    with glmed.open_image(written.path) as reader:
        np.testing.assert_array_equal(reader.read((0, 0, *reader.size))[..., 0], expected.mask * 255)  # 0/255
    assert any(note.startswith(f"test-time augmentation ({tta})") for note in written.notes)
    assert 0.1 < expected.mask.mean() < 0.9
    assert (expected.mask != glmed.predict(model, pixels, batch_size=3).mask).any()  # the views changed something


def test_a_run_resumes_only_with_the_views_it_began_with(tmp_path):
    model = tiny("g2l")
    slide = tmp_path / "slide.png"
    from PIL import Image

    Image.fromarray(image(70, 90)).save(slide)
    reader, _ = open_as_reader(slide)
    identities = {tta: _run_identity(model, slide, reader, GlobalLocalInferer(tta=tta))
                  for tta in (None, "flips", "dihedral")}
    assert len(set(identities.values())) == 3
    assert _run_identity(model, slide, reader, GlobalLocalInferer()) == identities[None]
    reader.close()


def test_unknown_tta_is_refused():
    with pytest.raises(ValueError, match="unknown tta 'rotations'; choose one of \\['flips', 'dihedral'\\]"):
        glmed.predict(tiny("g2l"), image(64, 64), tta="rotations")


def test_dihedral_on_an_image_far_from_square_says_its_rotated_views_are_squashed():
    model = tiny("g2l")
    wide = glmed.predict(model, image(64, 160), tta="dihedral")
    assert any("squashed" in note and "tta='flips'" in note for note in wide.notes)
    square = glmed.predict(model, image(128, 128), tta="dihedral")
    flips = glmed.predict(model, image(64, 160), tta="flips")
    assert not any("squashed" in note for note in square.notes + flips.notes)
