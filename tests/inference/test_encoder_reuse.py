"""reuse_encoder: bidirectional sharing's final pass takes the collect pass's encoder maps, the same bit for bit."""

import numpy as np
import pytest
import torch

import glmed
import glmed.inference.execution as execution
import glmed.inference.inferer as inferer_module
from glmed.cli import main
from glmed.inference import memory_budget
from glmed.inference.encoder_reuse import EncoderReuse, batch_key
from glmed.inference.inferer import GlobalLocalInferer
from glmed.inference.merging import RowBandMerger
from glmed.inference.slide import predict_to_tiff
from glmed.inference.tta import VIEWS
from glmed.io import open_image
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.ensemble import ensemble
from glmed.models.fpn import ENCODER_POINTS
from glmed.models.glnet import GLNet

SIZES = dict(fpn_channels=8, global_size=64, patch_size=64, overlap=8)
SIZE = (150, 170)  # 3×3 patches


def tiny(sharing="bidirectional", model_class=GLNet, seed=0):
    torch.manual_seed(seed)
    return model_class(2, "resnet18", sharing, **SIZES).eval()


def image(size=SIZE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _recording_merger(monkeypatch):
    """Every patch's probabilities as the merger receives them, in order: [(box, K×p×p array)]."""
    added = []

    class Recording(RowBandMerger):
        def add(self, probabilities, box):
            added.append((tuple(int(v) for v in box), probabilities.numpy().copy()))
            super().add(probabilities, box)

    monkeypatch.setattr(inferer_module, "RowBandMerger", Recording)
    return added


def _encoder_runs(model):
    """A list that grows by one per patch each time any local encoder of ``model`` runs."""
    runs = []
    members = model.networks if hasattr(model, "networks") else [model]
    for member in members:
        member.local_branch.encoder.register_forward_hook(lambda module, args, out: runs.extend([1] * len(args[0])))
    return runs


CASES = {
    "glnet": dict(),
    "batch 2": dict(batch_size=2),
    "flips": dict(tta="flips"),
    "uncertain": dict(refine="uncertain"),
    "coarse-to-fine": dict(model_class=CoarseToFineGLNet),
    "ensemble": dict(members=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reusing_gives_the_same_probabilities_bit_for_bit_and_runs_the_encoder_once_per_patch(monkeypatch, case):
    settings = dict(CASES[case])
    model_class, members = settings.pop("model_class", GLNet), settings.pop("members", 1)
    model = ensemble([tiny("bidirectional", model_class, seed) for seed in range(members)])
    if model_class is CoarseToFineGLNet:  # a box over most of the image: an untrained coarse mask is arbitrary
        monkeypatch.setattr(inferer_module, "coarse_to_fine_boxes", lambda *args: [(10, 0, 150, 140)])
    if settings.get("refine") == "uncertain":  # every other patch refined
        monkeypatch.setattr(inferer_module, "uncertain_patches",
                            lambda logits, boxes, margin: np.arange(len(boxes)) % 2 == 0)
    pixels = image()
    added = _recording_merger(monkeypatch)
    runs = _encoder_runs(model)
    plain = glmed.predict(model, pixels, **settings)
    plain_added, plain_runs = list(added), len(runs)
    added.clear()
    runs.clear()
    reused = glmed.predict(model, pixels, reuse_encoder=True, **settings)
    np.testing.assert_array_equal(reused.mask, plain.mask)
    assert [box for box, _ in added] == [box for box, _ in plain_added]
    for (_, with_reuse), (_, without) in zip(added, plain_added, strict=True):
        assert np.array_equal(with_reuse, without)  # the same bits, not merely close
    views = len(VIEWS[settings["tta"]]) if "tta" in settings else 1
    passes = reused.patches * views * members  # patch passes through one member's encoder
    assert reused.patches > 0 and plain_runs == 2 * passes and len(runs) == passes  # collect and final, then collect
    note = next(note for note in reused.notes if note.startswith("reuse_encoder:"))
    assert f"for {reused.patches * views} of {reused.patches * views} patch passes" in note
    assert not any(note.startswith("reuse_encoder:") for note in plain.notes)


def test_other_sharing_modes_have_nothing_to_reuse_and_say_nothing():
    model = tiny("g2l")
    result = glmed.predict(model, image(), reuse_encoder=True)
    np.testing.assert_array_equal(result.mask, glmed.predict(model, image()).mask)
    assert not any("reuse_encoder" in note for note in result.notes)


def test_the_store_keeps_only_batches_the_final_pass_will_run_and_gives_each_once():
    tally = EncoderReuse()
    store = tally.store(np.array([[0, 0, 64, 64], [0, 56, 64, 120]]))
    view = VIEWS["flips"][0]
    maps = {point: torch.ones(1, 2, 3, 3) for point in ENCODER_POINTS}
    wanted, done = batch_key(view, np.array([[0, 56, 64, 120]])), batch_key(view, np.array([[56, 0, 120, 64]]))
    store.keep(done, maps)  # a resumed run's finished patch: not held
    store.keep(wanted, maps)
    assert len(store) == 1 and store.nbytes == 4 * 9 * 2 * 4
    assert store.take(done) is None and store.take(wanted) is maps and store.take(wanted) is None
    assert store.nbytes == 0 and (tally.kept, tally.reused, tally.peak_bytes) == (1, 1, 288)
    other_view = batch_key(VIEWS["flips"][1], np.array([[0, 56, 64, 120]]))
    store.keep(other_view, maps)
    store.clear()
    assert len(store) == 0 and store.take(other_view) is None


def test_encoded_maps_of_another_batch_or_missing_a_level_are_refused():
    model = tiny()
    patches = torch.zeros(2, 3, 64, 64)
    encoded = dict(zip(ENCODER_POINTS, model.local_branch.encoder(patches[:1]), strict=True))
    with pytest.raises(ValueError, match="batches of .* but the image batch has 2"):
        model.local_branch(patches, None, None, encoded)
    del encoded["c3"]
    with pytest.raises(ValueError, match=r"lack \['c3'\]"):
        model.local_branch(patches[:1], None, None, encoded)


def test_an_interrupted_slide_run_with_reuse_resumes_to_the_uninterrupted_mask(tmp_path, slide, monkeypatch,
                                                                                fail_at_call):
    torch.manual_seed(0)
    model = GLNet(2, "resnet18", "bidirectional", fpn_channels=16, global_size=64, patch_size=64, overlap=8)
    uninterrupted = predict_to_tiff(model, slide, tmp_path / "whole.tif", tissue=False, batch_size=3)
    with monkeypatch.context() as patched:
        fail_at_call(model, patched, 16 + 9)  # 48 patches in batches of 3: the 9th batch of the final pass
        with pytest.raises(RuntimeError, match="device lost"):
            predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=3, reuse_encoder=True)
    runs = _encoder_runs(model)
    resumed = predict_to_tiff(model, slide, tmp_path / "mask.tif", tissue=False, batch_size=3, reuse_encoder=True)
    with open_image(resumed.path) as done, open_image(uninterrupted.path) as whole:
        np.testing.assert_array_equal(done.read((0, 0, *done.size)), whole.read((0, 0, *whole.size)))
    # the collect pass runs every patch again; only the unfinished ones' maps are kept, and each is taken
    assert 0 < resumed.patches < 48 and len(runs) == 48
    assert (f"reuse_encoder: the final pass took the collect pass's encoder maps for {resumed.patches} of "
            f"{resumed.patches} patch passes") in " ".join(resumed.notes)


# -- max_memory ------------------------------------------------------------------------------


def _plan(model, budget, **settings):
    return GlobalLocalInferer(max_memory=budget, batch_size=2, **settings).fitted(model, SIZE, out_in_memory=False,
                                                                                 with_coarse=False)


def test_the_estimate_counts_the_kept_maps_and_bounds_a_real_prediction_with_them(monkeypatch):
    model, pixels = tiny(), image()
    monkeypatch.setattr(execution, "PREFETCH", False)  # read in line, where the meter sees it
    runner, keeping = _plan(model, 2**40, reuse_encoder=True)
    _, plain = _plan(model, 2**40, reuse_encoder=False)
    assert runner.reuse_encoder and keeping.reuse_encoder and not plain.reuse_encoder
    with torch.inference_mode():  # one patch's four encoder maps, for each of the image's 9 patches
        one = sum(tensor.nbytes for tensor in model.local_branch.encoder(torch.zeros(1, 3, 64, 64)))
    assert keeping.encoder_store == 9 * one
    assert keeping.estimate(2) > plain.estimate(2)
    meter = memory_budget.MemoryMeter(torch.device("cpu"))
    with meter.session(), meter.block() as whole:
        glmed.predict(model, pixels, batch_size=2, out=np.zeros(SIZE, dtype=np.uint8), with_coarse=False,
                      thumbnail=False, reuse_encoder=True)
    assert whole.peak <= keeping.estimate(2) <= 1.2 * whole.peak + 100_000


def test_left_unset_it_is_switched_on_where_the_kept_maps_fit_and_the_note_says_which():
    model = tiny()
    runner, roomy = _plan(model, 2**40)
    assert runner.reuse_encoder and roomy.reuse_encoder and not roomy.reuse_chosen
    assert "reuse_encoder switched on" in roomy.note
    _, without = _plan(model, 2**40, reuse_encoder=False)
    # a budget that fits batch 2 without the kept maps, but not with them
    tight = without.estimate(2) + roomy.encoder_store // 2
    runner, chosen = _plan(model, tight)
    assert chosen.batch_size == 2 and not runner.reuse_encoder and not chosen.reuse_encoder
    assert "reuse_encoder left off" in chosen.note
    assert "reuse_encoder" not in without.note  # the caller's choice needs no word


def test_asked_for_it_counts_in_a_budget_too_small_and_the_error_says_so():
    model = tiny()
    _, keeping = _plan(model, 2**40, reuse_encoder=True)
    with pytest.raises(ValueError, match="or reuse_encoder=False, whose kept encoder maps"):
        _plan(model, keeping.estimate(1) - 1, reuse_encoder=True)


def test_the_cli_passes_reuse_encoder(tmp_path, monkeypatch):
    from PIL import Image

    from glmed.models.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "model.pt", tiny())
    Image.fromarray(image()).save(tmp_path / "image.png")
    seen = []
    predict = inferer_module.predict
    monkeypatch.setattr(inferer_module, "predict", lambda *a, **k: seen.append(k.get("reuse_encoder")) or predict(*a,
                                                                                                                **k))
    for flag, expected in (("--reuse-encoder", True), ("--no-reuse-encoder", False), (None, None)):
        arguments = ["predict", str(tmp_path / "model.pt"), str(tmp_path / "image.png"), str(tmp_path / "mask.png"),
                     "--quiet", "--device", "cpu"] + ([flag] if flag else [])
        assert main(arguments) == 0
        assert seen.pop() is expected
