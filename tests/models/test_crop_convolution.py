import pytest
import torch
import torch.nn.functional as F

import glmed.models.crop_convolution as crop_convolution
from glmed.models.crop_convolution import convolve_crops
from glmed.models.ensemble import ensemble
from glmed.models.fpn import FINAL, SHARED_POINTS
from glmed.models.glnet import GLNet
from glmed.models.sharing import crop_to_patches


def crop_then_convolve(global_map, weight, boxes, image_index, size):
    """The order GLNet's definition gives: resample the crop to the local map, then convolve it."""
    return F.conv2d(crop_to_patches(global_map, boxes, image_index, size), weight, padding=weight.shape[-1] // 2)


def patch_boxes(count, side, generator):
    """Square boxes of ``side`` (a fraction), two of them in opposite corners, the rest anywhere."""
    starts = torch.rand(count, 2, generator=generator, dtype=torch.float64) * (1 - side)
    starts[0] = 0.0
    starts[1] = 1 - side
    return torch.cat([starts, starts + side], dim=1)


@pytest.mark.parametrize(("images", "kernel", "map_size", "local_size", "side"), [
    (1, 3, (40, 56), (32, 32), 0.1),    # a small box: the windowed order
    (3, 3, (23, 31), (17, 13), 0.15),   # several images, a local map that is not square
    (2, 1, (40, 40), (16, 16), 0.1),    # a lateral (1×1) partner convolution
    (1, 3, (12, 12), (8, 8), 0.9),      # a box over most of the map: crop, then convolve
])
def test_equals_cropping_then_convolving_values_and_gradients(images, kernel, map_size, local_size, side):
    generator = torch.Generator().manual_seed(3)
    global_map = torch.randn(images, 6, *map_size, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 6, kernel, kernel, generator=generator, dtype=torch.float64, requires_grad=True)
    boxes = patch_boxes(7, side, generator)
    image_index = torch.randint(0, images, (7,), generator=generator)

    expected = crop_then_convolve(global_map, weight, boxes, image_index, local_size)
    got = convolve_crops(global_map, weight, boxes, image_index, local_size)
    assert got.shape == expected.shape == (7, 5, *local_size)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10 * float(expected.detach().abs().max()))

    upstream = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (global_map, weight))
    got_grads = torch.autograd.grad((got * upstream).sum(), (global_map, weight))
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-10 * float(e.abs().max()))


def test_a_small_box_is_convolved_on_its_window_and_a_large_one_after_cropping(monkeypatch):
    cropped = []

    def counting_crop(*args, **kwargs):
        cropped.append(1)
        return crop_to_patches(*args, **kwargs)

    monkeypatch.setattr(crop_convolution, "crop_to_patches", counting_crop)
    global_map, weight = torch.randn(1, 4, 64, 64), torch.randn(3, 4, 3, 3)
    index = torch.zeros(1, dtype=torch.long)
    convolve_crops(global_map, weight, torch.tensor([[0.2, 0.2, 0.3, 0.3]]), index, (64, 64))
    assert cropped == []  # ~9×9 cells of the map for a 64×64 local map
    convolve_crops(global_map, weight, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), index, (64, 64))
    assert cropped == [1]  # the whole map: the windowed order would cost more


def test_float32_is_as_close_to_the_exact_values_as_cropping_then_convolving_in_float32():
    """Against the float64 definition: the windowed order places its windows in float64, so it is
    closer than the float32 crop order (measured: 8e-7 against 6e-5 of outputs up to 4.7)."""
    generator = torch.Generator().manual_seed(5)
    global_map = torch.randn(1, 64, 127, 127, generator=generator)
    weight = torch.randn(32, 64, 3, 3, generator=generator) / 24
    boxes = patch_boxes(3, 0.075, generator).float()
    index = torch.zeros(3, dtype=torch.long)
    exact = crop_then_convolve(global_map.double(), weight.double(), boxes.double(), index, (127, 127))
    crop_order = crop_then_convolve(global_map, weight, boxes, index, (127, 127))
    windowed = convolve_crops(global_map, weight, boxes, index, (127, 127))
    assert windowed.dtype == torch.float32
    windowed_error = float((windowed.double() - exact).abs().max())
    assert windowed_error <= float((crop_order.double() - exact).abs().max())
    assert windowed_error < 1e-6 * float(exact.abs().max())


def test_under_bfloat16_autocast_it_is_no_less_exact_than_the_crop_order():
    """The resampling stays in float32 under autocast (measured: 0.015 against the crop order's 0.35,
    outputs up to 3.7)."""
    generator = torch.Generator().manual_seed(0)
    global_map = torch.randn(1, 16, 48, 48, generator=generator)
    weight = torch.randn(8, 16, 3, 3, generator=generator) / 12
    boxes, index = patch_boxes(3, 0.1, generator).float(), torch.zeros(3, dtype=torch.long)
    exact = crop_then_convolve(global_map.double(), weight.double(), boxes.double(), index, (40, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        crop_order = crop_then_convolve(global_map, weight, boxes, index, (40, 40))
        windowed = convolve_crops(global_map, weight, boxes, index, (40, 40))
    assert windowed.dtype == crop_order.dtype == torch.bfloat16
    assert float((windowed.double() - exact).abs().max()) <= float((crop_order.double() - exact).abs().max())


def test_rejects_an_even_or_oblong_kernel():
    global_map, boxes = torch.randn(1, 2, 8, 8), torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    index = torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match="odd size"):
        convolve_crops(global_map, torch.randn(1, 2, 2, 2), boxes, index, (8, 8))
    with pytest.raises(ValueError, match="odd size"):
        convolve_crops(global_map, torch.randn(1, 2, 1, 3), boxes, index, (8, 8))


def test_the_local_branch_gives_what_cropping_then_convolving_gives_at_every_shared_point():
    """GLNet's G→L sharing through the windowed order against the definition, map by map."""
    torch.manual_seed(0)
    model = GLNet(backbone="resnet18", fpn_channels=16, sharing="g2l").double().eval()
    with torch.no_grad():
        global_maps = model.global_features(torch.randn(2, 3, 128, 128, dtype=torch.float64))
        patches = torch.randn(3, 3, 64, 64, dtype=torch.float64)
        # Boxes a tenth of the image wide: the fine levels take the windowed order, the coarsest the crop.
        boxes = torch.tensor([[0.0, 0.0, 0.1, 0.1], [0.5, 0.25, 0.6, 0.35], [0.9, 0.9, 1.0, 1.0]]).double()
        index = torch.tensor([0, 1, 1])
        got = model.local_features(patches, global_maps, boxes, index)
        expected = model.local_branch(
            patches, lambda point, size, conv: conv(model.crop_global(global_maps, point, boxes, index, size))
        )
    assert set(got) == set(expected) and set(SHARED_POINTS) <= set(got)
    for name, map_ in expected.items():
        torch.testing.assert_close(got[name], map_, rtol=0, atol=1e-10 * max(float(map_.abs().max()), 1.0))


def test_the_aggregation_head_without_the_crop_gives_the_logits_with_it():
    """Inference's aggregation (kernel split, global half at the global resolution) against training's, one
    model and an ensemble of two."""
    torch.manual_seed(1)
    models = [GLNet(backbone="resnet18", fpn_channels=16, sharing="g2l").double().eval() for _ in range(2)]
    boxes = torch.tensor([[0.0, 0.0, 0.1, 0.1], [0.45, 0.9, 0.55, 1.0]]).double()
    index = torch.tensor([1, 0])
    for model in (models[0], ensemble(models)):
        with torch.no_grad():
            global_maps = model.global_features(torch.randn(2, 3, 128, 128, dtype=torch.float64))
            local_final = model.local_features(torch.randn(2, 3, 64, 64, dtype=torch.float64), global_maps,
                                               boxes, index)[FINAL]
            crop = model.crop_global(global_maps, FINAL, boxes, index, tuple(local_final.shape[-2:]))
            expected = model.aggregated_logits(local_final, crop, (64, 64))
            got = model.aggregated_logits_at_boxes(local_final, global_maps, boxes, index, (64, 64))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10 * float(expected.abs().max()))


def test_a_plan_kept_over_calls_gives_the_same_values_and_is_made_once_per_map_size_and_kernel():
    generator = torch.Generator().manual_seed(7)
    boxes, index = patch_boxes(4, 0.1, generator), torch.zeros(4, dtype=torch.long)
    plans = {}
    for map_side, kernel in [(40, 3), (40, 3), (40, 1), (20, 3)]:
        global_map = torch.randn(1, 6, map_side, map_side, generator=generator, dtype=torch.float64)
        weight = torch.randn(5, 6, kernel, kernel, generator=generator, dtype=torch.float64)
        alone = convolve_crops(global_map, weight, boxes, index, (32, 32))
        assert torch.equal(convolve_crops(global_map, weight, boxes, index, (32, 32), plans), alone)
    assert sorted(plans) == [((20, 20), (32, 32), 3), ((40, 40), (32, 32), 1), ((40, 40), (32, 32), 3)]
