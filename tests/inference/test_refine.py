"""refine="uncertain": the local branch runs only where the global branch is unsure; the rest takes its answer.

Tiny models on the CPU. The global branch's own head is either set (its bias decides) or scripted
(a given 2×64×64 map, whatever region it sees); the aggregation head is set to one class, so a
refined patch shows in the mask wherever no skipped patch overlaps it.
"""

import numpy as np
import pytest
import torch

import glmed
import glmed.inference.inferer as inferer
from glmed.geometry import footprint, patch_grid
from glmed.inference.inferer import GlobalLocalInferer
from glmed.inference.refinement import uncertain_patches
from glmed.inference.resume import resume_start
from glmed.inference.slide import predict_to_tiff
from glmed.io import open_image
from glmed.io.base import ArrayReader
from glmed.io.writers import write_pyramidal_tiff
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.sharing import footprints

PATCH, OVERLAP, GLOBAL = 48, 8, 64
SIZE = (100, 130)  # 3 × 4 patches of 48


def tiny(sharing="g2l", model_class=glmed.GLNet, **settings):
    torch.manual_seed(0)
    return model_class(2, "resnet18", sharing, fpn_channels=16, global_size=GLOBAL, patch_size=PATCH,
                       overlap=OVERLAP, **settings).eval()


def image(size=SIZE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def local_says(model, label):
    """The aggregation head answers ``label`` (odds e² : 1) on every patch the local branch runs on."""
    with torch.no_grad():
        model.aggregate.weight.zero_()
        model.aggregate.bias.copy_(torch.tensor([1.0, -1.0]) * (1 if label == 0 else -1))
    return model


def global_head_says(model, label=None):
    """The global branch's own head answers ``label`` everywhere, all but certain; None: 50:50 everywhere."""
    with torch.no_grad():
        model.global_head.weight.zero_()
        model.global_head.bias.zero_()
        if label is not None:
            model.global_head.bias[label] = 10.0
    return model


def two_class_map(foreground, gap=10.0, faint=None, faint_gap=1.0):
    """Logits on the 64×64 global grid: class 1 on ``foreground``, class 0 elsewhere, ``gap`` apart;
    ``faint`` (a mask) keeps its class but with only ``faint_gap`` between the classes."""
    score = np.where(np.asarray(foreground, bool), gap / 2, -gap / 2)
    if faint is not None:
        score = np.where(faint, np.sign(score) * faint_gap / 2, score)
    return np.stack([-score, score]).astype(np.float32)


def boundary_map():
    """A small confident lesion near the top right, and a faint (73% sure) background spot near the bottom right.

    On the 3 × 4 grid of :data:`SIZE`, the lesion's boundary lies under patches 2 and 3 (of row 0), the
    faint spot under patches 10 and 11 (of row 2); every other patch sees confident background.
    """
    lesion = np.zeros((GLOBAL, GLOBAL), bool)
    lesion[4:10, 50:58] = True
    faint = np.zeros((GLOBAL, GLOBAL), bool)
    faint[54:60, 48:56] = True
    return two_class_map(lesion, faint=faint)


def script_global(model, monkeypatch, logits):
    """The global branch's own head answers ``logits`` (2×64×64) for whatever region it sees."""
    logits = torch.as_tensor(logits)

    def global_logits(global_maps, size):
        assert tuple(size) == tuple(logits.shape[1:])
        return logits[None].clone()

    monkeypatch.setattr(model, "global_logits", global_logits)


def expected_refined(logits, region_size, margin):
    """The uncertain patches of a region's grid, found pixel by pixel with the scalar footprint."""
    probabilities = torch.as_tensor(logits).softmax(0).numpy()
    label, top = probabilities.argmax(0), probabilities.max(0)
    grid = patch_grid(region_size, PATCH, OVERLAP)
    chosen = []
    for box in grid.boxes:
        t, left, b, r = footprint(tuple(int(v) for v in box), region_size, label.shape)
        window = (slice(max(t - 1, 0), b + 1), slice(max(left - 1, 0), r + 1))
        unsure = margin is not None and bool((top[window] < 1 - margin).any())
        chosen.append(len(np.unique(label[window])) > 1 or unsure)
    return grid, np.array(chosen)


class CountingReader(ArrayReader):
    """Records every patch-sized region decoded from the image."""

    def __init__(self, array):
        super().__init__(array)
        self.reads = []

    def _read_level(self, level, box):
        if (box[2] - box[0], box[3] - box[1]) == (PATCH, PATCH):
            self.reads.append(tuple(int(v) for v in box))
        return super()._read_level(level, box)


def coverage(boxes, size):
    counts = np.zeros(size, int)
    for r0, c0, r1, c1 in boxes:
        counts[r0:r1, c0:c1] += 1
    return counts > 0


# -- box is today's behaviour; the two extremes of uncertain ------------------------------------------


@pytest.mark.parametrize("sharing", ["g2l", "bidirectional"])
def test_box_is_the_default_and_an_unsure_global_branch_refines_every_patch_like_it(sharing):
    model, pixels = global_head_says(tiny(sharing), None), image()
    default = glmed.predict(model, pixels)
    box = glmed.predict(model, pixels, refine="box")
    unsure = glmed.predict(model, pixels, refine="uncertain", margin=0.1)
    grid = patch_grid(SIZE, PATCH, OVERLAP)
    assert default.patches == box.patches == unsure.patches == len(grid)
    assert default.patches_skipped == box.patches_skipped == unsure.patches_skipped == 0
    np.testing.assert_array_equal(box.mask, default.mask)
    np.testing.assert_array_equal(unsure.mask, default.mask)  # bit for bit: the same batches, the same sums
    assert 0 < default.mask.mean() < 1  # a mask with both classes, so equality says something
    assert not any("refined" in note for note in default.notes + box.notes)
    assert f"refined {len(grid)} of {len(grid)} patches in the image; 0 took" in unsure.notes[0]


@pytest.mark.parametrize("sharing, model_class", [("g2l", glmed.GLNet), ("bidirectional", glmed.GLNet),
                                                  ("g2l", CoarseToFineGLNet)])
def test_a_confident_global_branch_refines_nothing_and_the_mask_is_its_answer(sharing, model_class, monkeypatch):
    model = local_says(global_head_says(tiny(sharing, model_class), 1), 0)
    reader = CountingReader(image())
    passes = []
    global_features = model.global_features
    monkeypatch.setattr(model, "global_features", lambda *a, **k: passes.append(a) or global_features(*a, **k))
    monkeypatch.setattr(model, "local_features", lambda *a, **k: pytest.fail("the local branch ran"))
    result = glmed.predict(model, reader, refine="uncertain")
    assert reader.reads == [] and result.patches == 0
    assert result.patches_skipped == len(patch_grid(SIZE, PATCH, OVERLAP))
    assert (result.mask == 1).all() and (result.coarse == 1).all()
    # coarse-to-fine: the whole image's pass, then the box's; no second (collecting) pass for bidirectional
    assert len(passes) == (2 if model_class is CoarseToFineGLNet else 1)
    where = "in the box" if model_class is CoarseToFineGLNet else "in the image"
    assert (f"refined 0 of {result.patches_skipped} patches {where}; {result.patches_skipped} took the global "
            "branch's answer (confident: one class throughout, a map pixel beyond the patch included)") in result.notes
    assert f"{result.patches_skipped} skipped" in repr(result)


# -- the mixed case: exactly the patches over the boundary (and the faint spot) -------------------------


@pytest.mark.parametrize("margin", [0.1, 0.3])
def test_exactly_the_patches_over_the_boundary_or_an_unconfident_spot_are_refined(margin, monkeypatch):
    model = local_says(tiny("g2l"), 1)
    logits = boundary_map()
    script_global(model, monkeypatch, logits)
    grid, chosen = expected_refined(logits, SIZE, margin)
    # the faint spot (73% sure) is unsure at margin 0.1 and sure enough at 0.3
    assert np.flatnonzero(chosen).tolist() == ([2, 3, 10, 11] if margin == 0.1 else [2, 3])
    reader = CountingReader(image())
    result = glmed.predict(model, reader, refine="uncertain", margin=margin)
    refined_boxes = [tuple(int(v) for v in box) for box in grid.boxes[chosen]]
    skipped_boxes = [tuple(int(v) for v in box) for box in grid.boxes[~chosen]]
    assert reader.reads == refined_boxes  # the others are never even read
    assert (result.patches, result.patches_skipped) == (chosen.sum(), (~chosen).sum())
    refined_area, skipped_area = coverage(refined_boxes, SIZE), coverage(skipped_boxes, SIZE)
    only_refined, only_skipped = refined_area & ~skipped_area, skipped_area & ~refined_area
    assert only_refined.any() and only_skipped.any()
    assert (result.mask[only_refined] == 1).all()  # the local branch's answer
    np.testing.assert_array_equal(result.mask[only_skipped], result.coarse[only_skipped])  # the global one's
    assert f"refined {chosen.sum()} of {len(grid)} patches in the image" in result.notes[0]
    assert f"top-class probability ≥ {1 - margin:g}" in result.notes[0]


@pytest.mark.parametrize("sharing", ["g2l", "bidirectional"])
def test_by_default_probabilities_do_not_count_only_where_classes_meet(sharing):
    # The same unsure head as above (one class everywhere, hardly above chance): a margin would
    # refine every patch, the default refines none, as the head never changes its mind.
    model, pixels = global_head_says(tiny(sharing), None), image()
    result = glmed.predict(model, pixels, refine="uncertain")
    grid = patch_grid(SIZE, PATCH, OVERLAP)
    assert (result.patches, result.patches_skipped) == (0, len(grid))
    np.testing.assert_array_equal(result.mask, result.coarse)
    assert "confident: one class throughout" in result.notes[0]


def test_the_vectorised_decision_agrees_with_the_pixel_by_pixel_one_on_random_maps():
    rng = np.random.default_rng(3)
    for size in [(100, 130), (333, 257), (48, 700)]:
        for margin in (0.05, 0.2, 0.45, None):
            logits = rng.normal(0, 1, (3, GLOBAL, GLOBAL)).astype(np.float32)
            logits[0, rng.random((GLOBAL, GLOBAL)) < 0.97] += 12  # mostly one confident class, with specks
            grid, chosen = expected_refined(logits, size, margin)
            np.testing.assert_array_equal(uncertain_patches(torch.as_tensor(logits), grid.normalized(), margin),
                                          chosen)


def test_coarse_to_fine_decides_from_the_boxs_own_global_pass(monkeypatch):
    model = local_says(tiny("g2l", CoarseToFineGLNet, target_ratio=0.1), 1)
    lesion = np.zeros((GLOBAL, GLOBAL), bool)
    lesion[20:28, 30:38] = True
    logits = two_class_map(lesion)
    script_global(model, monkeypatch, logits)  # the box's view 'sees' the lesion at the same place
    reader = CountingReader(image((320, 320)))
    result = glmed.predict(model, reader, refine="uncertain")
    (box,) = result.boxes
    region = (box[2] - box[0], box[3] - box[1])
    grid, chosen = expected_refined(logits, region, 0.1)
    assert 0 < chosen.sum() < len(grid)
    assert (result.patches, result.patches_skipped) == (chosen.sum(), (~chosen).sum())
    offset = np.array([box[0], box[1], box[0], box[1]])
    assert reader.reads == [tuple(int(v) for v in b + offset) for b in grid.boxes[chosen]]
    assert f"refined {chosen.sum()} of {len(grid)} patches in the box" in result.notes[0]
    view = result.mask[box[0] : box[2], box[1] : box[3]]
    refined_area, skipped_area = coverage(grid.boxes[chosen], region), coverage(grid.boxes[~chosen], region)
    assert (view[refined_area & ~skipped_area] == 1).all() and (view[skipped_area & ~refined_area] == 0).all()
    outside = np.ones(result.mask.shape, bool)
    outside[box[0] : box[2], box[1] : box[3]] = False
    assert not result.mask[outside].any()


# -- bidirectional: local context only from the refined patches ---------------------------------------


def test_bidirectional_collects_local_context_from_the_refined_patches_only(monkeypatch):
    model = tiny("bidirectional")
    logits = boundary_map()
    script_global(model, monkeypatch, logits)
    grid, chosen = expected_refined(logits, SIZE, 0.3)
    collected, contexts = [], []
    collect = inferer.collect_local_context

    def recording_collect(model, global_maps, batches, keep_encoded=None):
        batches = list(batches)
        collected.extend(box for _, boxes, _ in batches for box in boxes.tolist())
        return collect(model, global_maps, iter(batches), keep_encoded)

    global_features = model.global_features

    def recording_global_features(image, local_context=None):
        contexts.append(local_context)
        return global_features(image, local_context)

    monkeypatch.setattr(inferer, "collect_local_context", recording_collect)
    monkeypatch.setattr(model, "global_features", recording_global_features)
    result = glmed.predict(model, image(), refine="uncertain", margin=0.3, batch_size=3)
    assert result.patches == chosen.sum() < len(grid)
    refined = torch.as_tensor(grid.normalized()[chosen], dtype=torch.float32)  # as the patch batches carry them
    np.testing.assert_array_equal(np.array(collected, dtype=np.float32), refined.numpy())
    assert contexts[0] is None and len(contexts) == 2
    for point, stitched in contexts[1].items():
        covered = torch.zeros(stitched.shape[-2:], dtype=torch.bool)
        for t, left, b, r in footprints(refined, stitched.shape[-2:]).tolist():
            covered[t:b, left:r] = True
        assert not covered.all(), point
        assert (stitched[..., ~covered] == 0).all(), point  # no patch collected there: no local context
        assert (stitched[..., covered] != 0).any(), point


# -- slides: the same mask streamed, and resumed --------------------------------------------------------


def read_mask(path):
    with open_image(path) as reader:
        stored = reader.read((0, 0, *reader.size))[..., 0]
    assert set(np.unique(stored).tolist()) <= {0, 255}  # a two-class mask as viewers show it
    return stored // 255


def test_predict_to_tiff_writes_predicts_mask_and_resumes_with_the_same_refinement(tmp_path, monkeypatch):
    slide = tmp_path / "slide.tif"
    write_pyramidal_tiff(slide, image(), levels=1, tile=64, compression="zlib")
    model = local_says(tiny("g2l"), 1)
    script_global(model, monkeypatch, boundary_map())
    options = dict(batch_size=2, refine="uncertain", margin=0.1)
    expected = glmed.predict(model, slide, **options)
    written = predict_to_tiff(model, slide, tmp_path / "whole.tif", tissue=False, **options)
    np.testing.assert_array_equal(read_mask(written.path), expected.mask)
    assert (written.patches, written.patches_skipped, written.notes) == (4, 8, expected.notes)

    local_features, calls = model.local_features, []

    def failing_at_the_last_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == last_batch:
            raise RuntimeError("device lost")
        return local_features(*args, **kwargs)

    # The last batch (patches 10 and 11) fails after the first two rows of patches are written.
    for begun_with, last_batch in (("box", 6), ("uncertain", 2)):
        calls.clear()
        with monkeypatch.context() as patched:
            patched.setattr(model, "local_features", failing_at_the_last_batch)
            with pytest.raises(RuntimeError, match="device lost"):
                predict_to_tiff(model, slide, tmp_path / "mask.tif", batch_size=2, refine=begun_with, margin=0.1,
                                tissue=False)
        resumed = predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, **options)
        np.testing.assert_array_equal(read_mask(resumed.path), expected.mask)
        was_resumed = any("resumed" in note for note in resumed.notes)
        assert was_resumed == (begun_with == "uncertain")  # refine is part of what a run resumes with
        assert resumed.patches == (2 if was_resumed else 4)  # patches 10 and 11 only: rows 0-51 were written


# -- settings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, message", [
    (dict(refine="everywhere"), "unknown refine mode 'everywhere'; choose one of \\['box', 'uncertain'\\]"),
    (dict(margin=0), "margin must be a number in \\(0, 1\\), got 0"),
    (dict(margin=1.0), "margin must be a number in \\(0, 1\\), got 1.0"),
    (dict(margin=-0.2), "margin"),
    (dict(margin=float("nan")), "margin"),
    (dict(margin="0.1"), "margin"),
])
def test_bad_refine_settings_are_refused_before_any_work(tmp_path, settings, message):
    model = tiny("g2l")
    with pytest.raises(ValueError, match=message):
        GlobalLocalInferer(**settings)
    with pytest.raises(ValueError, match=message):
        glmed.predict(model, "no/such/image.png", **settings)
    with pytest.raises(ValueError, match=message):
        predict_to_tiff(model, "no/such/slide.tif", tmp_path / "mask.tif", **settings)


def test_uncertain_needs_a_global_branch_and_global_only_ignores_it(tmp_path):
    local_only = tiny("local_only")
    with pytest.raises(ValueError, match="without a global branch: use refine='box'"):
        glmed.predict(local_only, "no/such/image.png", refine="uncertain")
    with pytest.raises(ValueError, match="without a global branch"):
        predict_to_tiff(local_only, "no/such/slide.tif", tmp_path / "mask.tif", refine="uncertain")
    model, pixels = tiny("g2l"), image()
    alone = glmed.predict(model, pixels, global_only=True, refine="uncertain")
    np.testing.assert_array_equal(alone.mask, glmed.predict(model, pixels, global_only=True).mask)
    assert alone.patches == alone.patches_skipped == 0 and not any(n.startswith("refined") for n in alone.notes)


@pytest.mark.parametrize("first_unfinished, refined, batch_size, start", [
    (5, [1, 3, 4, 6, 9], 2, 4),  # the batch (4, 6) holds the first refined patch from 5 on: start at 4
    (5, [1, 3, 4, 6, 9], 3, 5),  # the batch (6, 9) starts after 5: start at 5, skipped patch 5 first
    (5, [1, 3], 2, 5),  # no refined patch left: only the skipped ones from 5 on
    (10, [1, 3], 2, 10),  # every patch finished
    (4, list(range(10)), 3, 3),  # every patch refined: the batch of 3 holding patch 4 starts at 3 (as before)
])
def test_a_resumed_pass_starts_where_the_refined_patches_are_batched_as_in_a_whole_run(first_unfinished, refined,
                                                                                       batch_size, start):
    unfinished = np.arange(10) >= first_unfinished
    chosen = np.isin(np.arange(10), refined)
    assert resume_start(unfinished, chosen, batch_size) == start
