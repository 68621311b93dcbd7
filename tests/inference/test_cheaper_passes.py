"""Cheaper inference passes: bf16 autocast, channels-last, reading ahead, no waiting on the device.

Tiny models on the CPU; nothing here is timed (docs/benchmarks.md has the figures).
"""

import threading
import time

import numpy as np
import pytest
import torch

import glmed
import glmed.inference.execution as execution
import glmed.inference.inferer as inferer
from glmed.geometry import footprint, patch_grid
from glmed.inference import merging
from glmed.io.base import ArrayReader, ImageFormatError
from glmed.models import sharing
from glmed.models.sharing import LocalToGlobalCanvas, crop_to_patches, footprints


def tiny(sharing_mode="bidirectional", model_class=glmed.GLNet, **settings):
    torch.manual_seed(0)
    return model_class(2, "resnet18", sharing_mode, fpn_channels=16, global_size=64, patch_size=64, overlap=8,
                       **settings).eval()


def image(height=150, width=170, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def recorded_probabilities(monkeypatch):
    """Every patch's probabilities as the merger receives them, in order."""
    seen = []
    add = merging.RowBandMerger.add

    def recording(self, probabilities, box):
        seen.append((probabilities.clone(), tuple(box)))
        return add(self, probabilities, box)

    monkeypatch.setattr(merging.RowBandMerger, "add", recording)
    return seen


# -- bf16 autocast ----------------------------------------------------------------------


def test_bf16_autocast_agrees_with_float32_and_keeps_probabilities_in_float32(monkeypatch):
    model, pixels = tiny(), image()
    full = glmed.predict(model, pixels).mask
    seen = recorded_probabilities(monkeypatch)
    half = glmed.predict(model, pixels, amp="bf16")
    assert (half.mask == full).mean() >= 0.99
    assert seen and all(probabilities.dtype == torch.float32 for probabilities, _ in seen)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights alone


def test_bf16_on_a_cpu_without_native_bfloat16_says_it_is_slow(monkeypatch):
    monkeypatch.setattr(execution, "cpu_has_bf16", lambda: False)
    notes = glmed.predict(tiny("g2l"), image(64, 64), amp="bf16").notes
    assert any("without native bfloat16" in note for note in notes)
    assert not any("bfloat16" in note for note in glmed.predict(tiny("g2l"), image(64, 64)).notes)


def test_an_unknown_amp_mode_is_refused_before_any_work():
    with pytest.raises(ValueError, match="unknown amp mode 'fp8'"):
        glmed.predict(tiny("g2l"), image(64, 64), amp="fp8")


# -- channels-last ----------------------------------------------------------------------


@pytest.mark.parametrize("model_class", [glmed.GLNet, glmed.CoarseToFineGLNet])
def test_channels_last_gives_the_same_mask_and_restores_the_models_layout(model_class):
    model, pixels = tiny(model_class=model_class), image()
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    default = glmed.predict(model, pixels)
    last = glmed.predict(model, pixels, channels_last=True)
    np.testing.assert_array_equal(last.mask, default.mask)
    np.testing.assert_array_equal(last.coarse, default.coarse)
    for name, parameter in model.named_parameters():
        assert parameter.is_contiguous(), name
        assert torch.equal(parameter, weights[name]), name


def test_a_channels_last_model_stays_channels_last():
    model = tiny("g2l").to(memory_format=torch.channels_last)
    glmed.predict(model, image(64, 64), channels_last=True)
    convs = [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


# -- reading ahead ----------------------------------------------------------------------


@pytest.mark.parametrize("model_class, mode", [(glmed.GLNet, "bidirectional"), (glmed.GLNet, "local_only"),
                                               (glmed.CoarseToFineGLNet, "bidirectional")])
def test_reading_ahead_gives_exactly_what_reading_in_line_gives(monkeypatch, model_class, mode):
    model, pixels = tiny(mode, model_class), image(200, 230)
    if model_class is glmed.CoarseToFineGLNet:
        with torch.no_grad():
            model.global_head.bias.copy_(torch.tensor([0.0, 0.3]))  # some foreground, so a box
    seen = recorded_probabilities(monkeypatch)
    ahead = glmed.predict(model, pixels, batch_size=3)
    read_ahead = list(seen)
    seen.clear()
    monkeypatch.setattr(execution, "PREFETCH", False)
    in_line = glmed.predict(model, pixels, batch_size=3)
    np.testing.assert_array_equal(ahead.mask, in_line.mask)
    assert ahead.patches == in_line.patches > 3  # several batches, so something was read ahead
    assert len(read_ahead) == len(seen)
    for (first, box), (second, other) in zip(read_ahead, seen, strict=True):
        assert box == other and torch.equal(first, second)  # bit for bit


class FailingReader(ArrayReader):
    """An image whose patch reads fail as a corrupt tile would (from ``bad_row`` down) or wait for
    ``gate`` (from the ``slow_from``-th patch read on); it logs those reads and its closing."""

    def __init__(self, pixels, bad_row=None, slow_from=None, gate=None):
        super().__init__(pixels, name="slide_0007.tif")
        self.bad_row, self.slow_from, self.gate = bad_row, slow_from, gate
        self.started = threading.Event()
        self.events, self.reading_threads, self.patch_reads = [], set(), 0

    def read(self, box, level=0):
        if box[2] - box[0] < self.size[0]:  # a patch, not the global view
            self.reading_threads.add(threading.current_thread().name)
            self.patch_reads += 1
            if self.bad_row is not None and box[0] >= self.bad_row:
                raise ImageFormatError(f"{self.name}: the tile at row {box[0]} is corrupt")
            if self.slow_from is not None and self.patch_reads > self.slow_from:
                self.events.append("read starts")
                self.started.set()
                self.gate.wait(timeout=30)  # until the network has failed on the batch before
                time.sleep(0.2)  # long enough that closing without waiting for this read would come first
                self.events.append("read ends")
        return super().read(box, level)

    def close(self):
        self.events.append("close")
        super().close()


def test_a_read_failing_on_the_reading_thread_names_the_file(monkeypatch):
    reader = FailingReader(image(200, 230), bad_row=100)
    monkeypatch.setattr(inferer, "open_as_reader", lambda _: (reader, True))
    with pytest.raises(ImageFormatError, match=r"slide_0007\.tif: the tile at row 1\d\d is corrupt"):
        glmed.predict(tiny("g2l"), "slide_0007.tif", batch_size=2)
    assert any(name.startswith("glmed-read-ahead") for name in reader.reading_threads)
    assert reader.events == ["close"]


def test_the_image_is_closed_only_after_the_reading_thread_is_done(monkeypatch):
    gate = threading.Event()
    reader = FailingReader(image(200, 230), slow_from=2, gate=gate)  # the second batch of two waits
    monkeypatch.setattr(inferer, "open_as_reader", lambda _: (reader, True))
    model = tiny("local_only")

    def failing_pass(*args, **kwargs):
        assert reader.started.wait(timeout=30)  # the next batch's read is under way on the other thread
        gate.set()  # and finishes only once this pass has failed
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "local_features", failing_pass)
    with pytest.raises(RuntimeError, match="out of memory"):
        glmed.predict(model, "slide_0007.tif", batch_size=2)
    assert reader.events[-1] == "close" and reader.events.count("close") == 1
    assert reader.events.index("close") > max(i for i, e in enumerate(reader.events) if e == "read ends")


def test_reading_ahead_stops_when_the_consumer_stops():
    produced = []

    def items():
        for i in range(100):
            produced.append(i)
            yield i

    with execution.read_ahead(items()) as ahead:
        assert [next(ahead), next(ahead)] == [0, 1]
    assert produced in ([0, 1], [0, 1, 2])  # at most one item ahead (none if cancelled before it began)


# -- no waiting on the device: crops and canvas ------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_three_ways_of_cropping_give_the_same_bits(dtype):
    torch.manual_seed(0)
    global_map = torch.randn(3, 5, 23, 29).to(dtype)
    boxes = torch.tensor(patch_grid((400, 300), 96, 10).normalized(), dtype=torch.float32)
    image_index = torch.randint(0, 3, (len(boxes),))
    exact = global_map.float()
    grid = torch.nn.functional.affine_grid(_theta(boxes), [len(boxes), 1, 11, 13], align_corners=False)
    per_image = sharing._sample_per_image(exact, grid, image_index)
    gathered = sharing._sample_gathered(exact, grid, image_index)
    assert torch.equal(per_image, gathered)
    crops = crop_to_patches(global_map, boxes, image_index, (11, 13))
    assert crops.dtype == dtype and crops.is_contiguous() and torch.equal(crops, per_image.to(dtype))
    for image_number in range(3):  # one image: all windows in one call, the index is not read
        chosen = image_index == image_number
        alone = crop_to_patches(global_map[image_number : image_number + 1], boxes[chosen],
                                torch.full((int(chosen.sum()),), 7), (11, 13))
        assert torch.equal(alone, crops[chosen])


def _theta(boxes):
    theta = torch.zeros(len(boxes), 2, 3)
    theta[:, 0, 0] = boxes[:, 3] - boxes[:, 1]
    theta[:, 0, 2] = boxes[:, 1] + boxes[:, 3] - 1
    theta[:, 1, 1] = boxes[:, 2] - boxes[:, 0]
    theta[:, 1, 2] = boxes[:, 0] + boxes[:, 2] - 1
    return theta


def test_footprints_of_many_boxes_are_each_boxs_footprint():
    boxes = torch.tensor(patch_grid((1234, 987), 130, 17).normalized(), dtype=torch.float32)
    boxes = torch.cat([boxes, torch.tensor([[0.0, 0.0, 1e-4, 1e-4], [0.9999, 0.9999, 1.0, 1.0]])])
    for grid_size in [(16, 16), (127, 127), (7, 31)]:
        expected = [footprint(box, (1.0, 1.0), grid_size) for box in boxes.double().tolist()]
        assert [tuple(cells) for cells in footprints(boxes, grid_size).tolist()] == expected


def test_the_canvas_is_the_same_whether_boxes_come_on_the_host_or_as_any_type():
    torch.manual_seed(0)
    boxes = torch.tensor(patch_grid((300, 200), 64, 10).normalized(), dtype=torch.float32)
    maps = {"c2": torch.randn(len(boxes), 3, 16, 16), "c3": torch.randn(len(boxes), 4, 8, 8)}
    sizes = {"c2": torch.Size([2, 3, 20, 20]), "c3": torch.Size([2, 4, 10, 10])}
    index = torch.arange(len(boxes)) % 2
    results = []
    for given in (boxes, boxes.double()):
        canvas = LocalToGlobalCanvas(sizes, torch.device("cpu"), torch.float32)
        canvas.add(maps, given, index)
        results.append(canvas.maps())
    assert all(torch.equal(results[0][name], results[1][name]) for name in sizes)
