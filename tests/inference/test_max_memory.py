"""``max_memory``: the patch batch (and bf16) chosen from measured passes so the estimated peak fits a budget.

Tiny models on the CPU. The measurement is cached per model config for the process, so most
tests pay it once; the estimate is checked against the live tensors of real predictions.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import glmed
import glmed.inference.execution as execution
import glmed.inference.inferer as inferer
from glmed.cli import main
from glmed.data.synthetic import make_dermoscopy_image
from glmed.inference import memory_budget
from glmed.inference.inferer import GlobalLocalInferer
from glmed.inference.memory_budget import LiveTensorBytes, MemoryBudget, parse_memory
from glmed.inference.slide import predict_to_tiff
from glmed.io.writers import write_pyramidal_tiff
from glmed.models.checkpoint import save_checkpoint

SIZES = dict(fpn_channels=16, global_size=64, patch_size=64, overlap=8)
SIZE = (150, 170)  # 3×3 patches of 64 with an overlap of at least 8
SLIDE = (200, 260)  # 4×5 patches


def tiny(sharing="bidirectional", model_class=glmed.GLNet):
    torch.manual_seed(0)
    return model_class(2, "resnet18", sharing, **SIZES).eval()


def image(size=SIZE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def plan(model, budget, size=SIZE, in_memory=True, **settings):
    _, chosen = GlobalLocalInferer(max_memory=budget, **settings).fitted(model, size, out_in_memory=in_memory,
                                                                         with_coarse=in_memory)
    return chosen


def least(model, size=SIZE, in_memory=True, **settings):
    """The estimate at batch 1, in bytes: the least budget that works (without reuse_encoder's kept maps, which
    a budget left to choose switches on only where they fit; test_encoder_reuse.py has those)."""
    return plan(model, 2**40, size, in_memory, **{"reuse_encoder": False, **settings}).estimate(1)


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, nbytes, binary", [
    ("1GB", 10**9, False), ("512MB", 512 * 10**6, False), ("1.5 GiB", 3 * 2**29, True), ("64 kib", 65536, True),
    ("2048", 2048, False), ("1e9", 10**9, False), ("3 b", 3, False), (" 2 tb ", 2 * 10**12, False),
    (10**9, 10**9, False), (1.5e9, 15 * 10**8, False),
])
def test_sizes_are_read_in_decimal_and_binary_units(text, nbytes, binary):
    assert parse_memory(text) == MemoryBudget(nbytes, binary)


@pytest.mark.parametrize("text", ["abc", "1 GBs", "GB", "-1GB", "0", "0.5", "", "1..5GB", "1 G B", True, [1], "nan"])
def test_bad_sizes_are_refused_naming_the_option(text):
    with pytest.raises(ValueError, match="max_memory"):
        parse_memory(text)
    with pytest.raises(ValueError, match="max_memory"):
        glmed.predict(tiny("local_only"), image((64, 64)), max_memory=text)


def test_sizes_are_reported_in_the_budgets_own_units():
    assert str(parse_memory("1GB")) == "1 GB" and str(parse_memory("1.5GiB")) == "1.5 GiB"
    assert parse_memory("1GB").format(0.83e9) == "0.83 GB" and parse_memory("512MB").format(312.4e6) == "312 MB"
    assert parse_memory("2GiB").format(2**29) == "0.50 GiB"


# -- counting live tensors ------------------------------------------------------------------


def test_live_tensor_bytes_counts_new_storages_while_they_live():
    before = torch.zeros(1000)
    with LiveTensorBytes() as counter:
        made = before + 1  # 4000 new bytes
        view = made[10:]  # a view adds nothing
        made.add_(1)  # nor does an in-place result
        before.mul_(2)  # nor a tensor from before the block
        other = torch.ones(500)  # 2000 more
        del made  # the view keeps the storage alive
        assert counter.live == 6000
        del other
        assert counter.live == 4000
        del view
    assert counter.peak == 6000 and counter.live == 0


@pytest.mark.parametrize("sharing, model_class, refine, batches", [
    ("bidirectional", glmed.GLNet, "box", (1, 3)), ("g2l", glmed.GLNet, "box", (2,)),
    ("local_only", glmed.GLNet, "box", (2,)), ("bidirectional", glmed.GLNet, "uncertain", (2,)),
    ("bidirectional", glmed.CoarseToFineGLNet, "box", (2,)),
])
def test_the_estimate_bounds_the_memory_of_a_real_prediction(monkeypatch, sharing, model_class, refine, batches):
    model, pixels = tiny(sharing, model_class), image()
    monkeypatch.setattr(execution, "PREFETCH", False)  # read in line, where the meter sees it
    if model_class is glmed.CoarseToFineGLNet:  # a box that is the whole image: every phase runs
        monkeypatch.setattr(inferer, "coarse_to_fine_boxes", lambda *args: [(0, 0, *SIZE)])
    # every other patch refined, the others taking the global answer (an untrained model's confidence is arbitrary)
    monkeypatch.setattr(inferer, "uncertain_patches", lambda logits, boxes, margin: np.arange(len(boxes)) % 2 == 0)
    for batch in batches:
        chosen = GlobalLocalInferer(batch_size=batch, max_memory=2**40, refine=refine, reuse_encoder=False)
        _, estimate = chosen.fitted(model, SIZE, out_in_memory=False, with_coarse=False)
        out = np.zeros(SIZE, dtype=np.uint8)
        meter = memory_budget.MemoryMeter(torch.device("cpu"))
        with meter.session(), meter.block() as whole:
            result = glmed.predict(model, pixels, batch_size=batch, out=out, with_coarse=False, thumbnail=False,
                                   refine=refine)
        assert result.patches > 0 and meter.kind == "torch.profiler memory events"
        assert whole.peak <= estimate.estimate(batch)
        if batch <= 2:  # measured, not extrapolated (tiny models' kernels change at batch 2, so the slope errs high)
            # the estimate also counts the raw pixels read, numpy arrays the meter does not see
            assert estimate.estimate(batch) <= 1.2 * whole.peak + 100_000


@pytest.mark.parametrize("sharing, refine", [("bidirectional", "box"), ("g2l", "uncertain")])
def test_the_estimate_with_tta_bounds_a_real_prediction_and_exceeds_the_plain_one(monkeypatch, sharing, refine):
    model, pixels = tiny(sharing), image()
    monkeypatch.setattr(execution, "PREFETCH", False)  # read in line, where the meter sees it
    monkeypatch.setattr(inferer, "uncertain_patches", lambda logits, boxes, margin: np.arange(len(boxes)) % 2 == 0)
    _, estimate = GlobalLocalInferer(batch_size=2, max_memory=2**40, refine=refine, tta="flips",
                                     reuse_encoder=False).fitted(model, SIZE, out_in_memory=False, with_coarse=False)
    _, plain = GlobalLocalInferer(batch_size=2, max_memory=2**40, refine=refine, reuse_encoder=False).fitted(
        model, SIZE, out_in_memory=False, with_coarse=False)
    out = np.zeros(SIZE, dtype=np.uint8)
    meter = memory_budget.MemoryMeter(torch.device("cpu"))
    with meter.session(), meter.block() as whole:
        glmed.predict(model, pixels, batch_size=2, out=out, with_coarse=False, thumbnail=False, refine=refine,
                      tta="flips")
    assert plain.estimate(2) < estimate.estimate(2)
    assert whole.peak <= estimate.estimate(2) <= 1.2 * whole.peak + 100_000


# -- choosing the batch ----------------------------------------------------------------------


def test_a_larger_budget_never_gives_a_smaller_batch_and_each_batch_is_the_largest_that_fits():
    model = tiny()
    minimum = least(model)
    batches = []
    for budget in np.linspace(minimum, 3 * minimum, 12).astype(int):
        chosen = plan(model, int(budget))
        batches.append(chosen.batch_size)
        assert chosen.estimate(chosen.batch_size) <= budget
        if chosen.capped_by is None:
            assert chosen.estimate(chosen.batch_size + 1) > budget
        else:
            assert chosen.capped_by == "patches" and chosen.batch_size == 9
    assert batches == sorted(batches) and batches[0] == 1 and batches[-1] > 1


def test_the_estimate_grows_by_the_measured_per_patch_cost_and_the_batch_is_capped_by_the_patches():
    chosen = plan(tiny(), 2**40)
    assert chosen.batch_size == 9 and chosen.capped_by == "patches"
    phase = chosen.peak_phase(8)
    assert chosen.peak_phase(7) == phase  # one phase is the peak over these batches: the slope is its per-patch cost
    assert phase.per_patch > 0 and chosen.estimate(8) - chosen.estimate(7) == phase.per_patch
    assert [p.name for p in chosen.phases] == ["global pass", "coarse mask", "collect pass", "second global pass",
                                               "local pass"]


def test_the_note_says_the_batch_and_its_estimate():
    model, pixels = tiny("g2l"), image()
    budget = least(model) * 2
    chosen = plan(model, budget)
    result = glmed.predict(model, pixels, max_memory=budget)
    phase = chosen.peak_phase(chosen.batch_size)
    assert result.notes[0] == chosen.note
    units = chosen.budget
    assert result.notes[0].startswith(f"max_memory {units}: batch {chosen.batch_size} patches (estimated peak "
                                      f"{units.format(chosen.estimate(chosen.batch_size))} in the {phase.name}: "
                                      f"{units.format(phase.fixed)} fixed + {units.format(phase.per_patch)} per patch")
    np.testing.assert_array_equal(result.mask, glmed.predict(model, pixels, batch_size=chosen.batch_size).mask)


def test_the_note_warns_of_glibcs_retained_buffers_unless_its_threshold_is_set(monkeypatch):
    model = tiny("g2l")
    monkeypatch.setattr(memory_budget.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(memory_budget.platform, "system", lambda: "Linux")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert "MALLOC_MMAP_THRESHOLD_=131072" in plan(model, 2**40).note
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert "glibc" not in plan(model, 2**40).note


def test_batch_size_is_the_most_the_budget_may_choose():
    model = tiny("g2l")
    capped = plan(model, 2**40, batch_size=2)
    assert capped.batch_size == 2 and capped.capped_by == "batch_size" and "batch_size 2 is the most" in capped.note
    assert plan(model, least(model), batch_size=5).batch_size == 1  # the budget lowers it


def test_a_budget_below_batch_1_is_refused_before_any_patch_is_read(monkeypatch):
    model = tiny()
    minimum = least(model)
    monkeypatch.setattr(inferer, "iter_patch_batches", lambda *a: pytest.fail("a patch was read"))
    monkeypatch.setattr(execution, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match="too small") as error:
        glmed.predict(model, image(), max_memory=minimum - 1)
    text = str(error.value)
    budget = MemoryBudget(minimum - 1)
    assert f"give at least {budget.format(minimum)}" in text and "not native on cpu" in text


def test_bf16_is_switched_on_only_where_float32_cannot_fit_and_the_device_runs_it_natively(monkeypatch):
    # Tiny models' activations weigh less than the casts of their weights, so bf16 would not help
    # them: the passes' figures are made up here, bf16's a quarter of float32's per patch.
    def measured(trial, *args, **kwargs):
        per_patch = 4_000_000 if trial.amp == "off" else 1_000_000
        pair = (per_patch, 2 * per_patch)
        return memory_budget.PassMemory(1000, 1000, 1000, 1000, 1000, 0, 0, (0, 0), pair, (0, 0), (0, 0), (0, 0))

    monkeypatch.setattr(memory_budget, "measure_passes", measured)
    model, pixels = tiny("g2l"), image((64, 64))  # one patch
    full, half = least(model, (64, 64)), least(model, (64, 64), amp="bf16")
    assert half + 2_000_000 < full
    budget = (full + half) // 2
    monkeypatch.setattr(execution, "cpu_has_bf16", lambda: False)  # never on a CPU without native bf16
    with pytest.raises(ValueError, match="not native"):
        glmed.predict(model, pixels, max_memory=budget)
    monkeypatch.setattr(execution, "cpu_has_bf16", lambda: True)
    result = glmed.predict(model, pixels, max_memory=budget)
    assert "bf16 autocast switched on: float32 needs" in result.notes[0]
    np.testing.assert_array_equal(result.mask, glmed.predict(model, pixels, amp="bf16", batch_size=1).mask)
    assert "bf16" not in glmed.predict(model, pixels, max_memory=full).notes[0]  # float32 fits: stays float32
    with pytest.raises(ValueError, match="amp='off' was asked for"):  # the caller's choice stands
        glmed.predict(model, pixels, max_memory=budget, amp="off")


def test_global_only_has_no_batch_to_choose():
    with pytest.raises(ValueError, match="a global_only prediction reads no patches"):
        glmed.predict(tiny(), image(), max_memory="1GB", global_only=True)


def test_the_measurement_is_cached_per_model_config_and_device(monkeypatch):
    model = tiny("g2l")
    plan(model, 2**40)
    monkeypatch.setattr(memory_budget._Passes, "batch", lambda *a: pytest.fail("measured again"))
    plan(tiny("g2l"), 2**30)  # other weights, same config: the same passes


# -- predict_to_tiff, the CLI ------------------------------------------------------------------


@pytest.fixture
def slide(tmp_path):
    pixels, _ = make_dermoscopy_image(SLIDE, seed=4)
    path = tmp_path / "slide.tif"
    write_pyramidal_tiff(path, pixels, levels=2, tile=64, compression="zlib")
    return path


def test_predict_to_tiff_resumes_only_with_the_batch_it_began_with(tmp_path, slide, monkeypatch, fail_at_call):
    model = tiny("local_only")
    minimum = least(model, SLIDE, in_memory=False)  # predict_to_tiff's mask is on disk
    per_batch = {plan(model, b, SLIDE, in_memory=False).batch_size: b
                 for b in np.linspace(minimum, 4 * minimum, 40).astype(int).tolist()}
    assert 3 in per_batch and 2 in per_batch  # budgets that give batch 3 and batch 2 (measured, then cached)
    for budget, resumed in ((per_batch[3], True), (per_batch[2], False)):
        with monkeypatch.context() as patched:
            fail_at_call(model, patched, 6)
            with pytest.raises(RuntimeError):
                predict_to_tiff(model, slide, tmp_path / "mask.tif", batch_size=3, tissue=False)  # not a slide
        result = predict_to_tiff(model, slide, tmp_path / "mask.tif", max_memory=budget, tissue=False)
        assert result.notes[0].startswith(f"max_memory {MemoryBudget(budget)}: batch {3 if resumed else 2} patches")
        assert any("resumed" in note for note in result.notes) == resumed
        assert (result.patches < 20) == resumed  # a different batch starts afresh: batches never mix


def test_predict_to_tiff_refuses_a_budget_too_small_before_the_scratch_mask(tmp_path, slide):
    with pytest.raises(ValueError, match="too small"):
        predict_to_tiff(tiny("local_only"), slide, tmp_path / "mask.tif", max_memory="1kB")
    assert list(tmp_path.iterdir()) == [slide]


def test_the_cli_passes_max_memory_to_predict_and_prints_the_note(tmp_path, monkeypatch, capsys):
    model = tiny("g2l")
    save_checkpoint(tmp_path / "best.pt", model)
    Image.fromarray(image()).save(tmp_path / "image.png")
    calls = []
    real = inferer.predict
    monkeypatch.setattr(inferer, "predict", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert main(["predict", str(tmp_path / "best.pt"), str(tmp_path / "image.png"), str(tmp_path / "mask.png"),
                 "--quiet", "--device", "cpu", "--max-memory", "1GB"]) == 0
    assert calls[0]["max_memory"] == "1GB" and calls[0]["batch_size"] is None
    assert "note: max_memory 1 GB: batch 9 patches" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "best.pt"), str(tmp_path / "image.png"), str(tmp_path / "mask.png"),
                 "--device", "cpu", "--max-memory", "lots"]) == 1
    assert "--max-memory: cannot read 'lots' as a size" in capsys.readouterr().err
