import torch

from glmed.geometry import patch_grid
from glmed.models.sharing import LocalToGlobalCanvas, crop_to_patches


def test_crop_of_the_whole_image_is_the_map_itself():
    global_map = torch.randn(1, 4, 16, 16)
    crop = crop_to_patches(global_map, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0]), (16, 16))
    torch.testing.assert_close(crop, global_map)


def test_crop_at_pixel_aligned_windows_equals_slicing():
    global_map = torch.randn(2, 3, 16, 16)
    boxes = torch.tensor([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.5]])
    crop = crop_to_patches(global_map, boxes, torch.tensor([1, 0]), (8, 8))
    torch.testing.assert_close(crop[0], global_map[1, :, 4:12, 8:16])
    torch.testing.assert_close(crop[1], global_map[0, :, 0:8, 0:8])


def test_stitching_constant_maps_reproduces_them():
    grid = patch_grid((300, 200), 64, 10)
    boxes = torch.tensor(grid.normalized(), dtype=torch.float32)
    canvas = LocalToGlobalCanvas({"c2": torch.Size([1, 3, 16, 16])}, torch.device("cpu"), torch.float32)
    values = torch.tensor([1.5, -2.0, 7.25]).view(1, 3, 1, 1)
    canvas.add({"c2": values.expand(len(boxes), 3, 16, 16)}, boxes, torch.zeros(len(boxes), dtype=torch.long))
    stitched = canvas.maps()["c2"]
    # resampling to each footprint is an interpolation: equal up to float rounding
    torch.testing.assert_close(stitched, values.expand(1, 3, 16, 16), atol=2e-6, rtol=0)


def test_stitching_places_each_patch_where_it_lies():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]])
    local = torch.stack([torch.full((1, 4, 4), 1.0), torch.full((1, 4, 4), 3.0)])
    canvas = LocalToGlobalCanvas({"p2": torch.Size([2, 1, 8, 8])}, torch.device("cpu"), torch.float32)
    canvas.add({"p2": local}, boxes, torch.tensor([1, 1]))
    out = canvas.maps()["p2"]
    assert (out[0] == 0).all()  # image 0 received nothing
    assert (out[1, 0, :4] == 1).all() and (out[1, 0, 4:] == 3).all()
