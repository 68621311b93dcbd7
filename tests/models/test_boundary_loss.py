import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glmed.models.losses import BoundaryLoss, boundary_band


def square_label(size=12, top=3, side=5, dtype=torch.long):
    """One N=1 label map: a side×side square of class 1 at (top, top) on class 0."""
    label = torch.zeros(1, size, size, dtype=dtype)
    label[0, top : top + side, top : top + side] = 1
    return label


def brute_force_band(label: np.ndarray, width: int, ignore: int | None) -> np.ndarray:
    """A pixel is in the band when a labelled pixel of another class lies within `width` (Chebyshev)."""
    n, h, w = label.shape
    band = np.zeros(label.shape, dtype=bool)
    for i in range(n):
        for r in range(h):
            for c in range(w):
                if label[i, r, c] == ignore:
                    continue
                window = label[i, max(0, r - width) : r + width + 1, max(0, c - width) : c + width + 1]
                band[i, r, c] = bool(((window != label[i, r, c]) & (window != ignore)).any())
    return band


@pytest.mark.parametrize("width", [1, 2])
def test_band_of_a_square_lies_exactly_width_pixels_on_each_side_of_its_edge(width):
    band = boundary_band(square_label(), width)[0]
    expected = torch.zeros(12, 12, dtype=torch.bool)
    expected[3 - width : 8 + width, 3 - width : 8 + width] = True  # the square dilated by `width`
    expected[3 + width : 8 - width, 3 + width : 8 - width] = False  # minus the square eroded by `width`
    torch.testing.assert_close(band, expected)
    assert int(band.sum()) == {1: 7 * 7 - 3 * 3, 2: 9 * 9 - 1}[width]


def test_the_image_border_is_no_edge():
    label = square_label(size=8, top=0, side=4)  # the square sits in the top-left corner
    band = boundary_band(label, 1)[0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:5, 0:5] = True
    expected[0:3, 0:3] = False  # the square's pixels along the image border are not on an edge
    torch.testing.assert_close(band, expected)


@pytest.mark.parametrize("width", [1, 3])
def test_band_matches_a_brute_force_count_with_several_classes_and_ignored_pixels(width):
    generator = torch.Generator().manual_seed(0)
    # blocky labels: 3 classes plus ignored pixels (255), in 2 images
    label = torch.randint(0, 3, (2, 5, 6), generator=generator).repeat_interleave(3, 1).repeat_interleave(3, 2)
    label[torch.rand(label.shape, generator=generator) < 0.1] = 255
    band = boundary_band(label.to(torch.uint8), width, ignore_index=255)
    np.testing.assert_array_equal(band.numpy(), brute_force_band(label.numpy(), width, 255))


def test_ignored_pixels_neither_join_the_band_nor_make_an_edge():
    label = square_label()
    label[0, :, 8:] = 255  # ignored ground right of the square, touching its right side
    band = boundary_band(label, 1, ignore_index=255)[0]
    assert not band[:, 8:].any()
    # the square's right side touches only ignored pixels: no band along it, but along its other sides
    assert not band[4:7, 7].any() and band[3:8, 2].all()


def test_boundary_loss_is_the_loss_of_the_band_pixels_alone():
    torch.manual_seed(0)
    label = square_label()
    logits = torch.randn(1, 2, 12, 12)
    band = boundary_band(label, 2)
    expected = F.cross_entropy(logits, torch.where(band, label, -100))
    torch.testing.assert_close(BoundaryLoss(width=2)(logits, label), expected)
    # focal on the band: gamma passes through
    focal = BoundaryLoss(width=2, gamma=2.0)(logits, label)
    p_t = F.softmax(logits, 1).gather(1, label[:, None])[:, 0]
    torch.testing.assert_close(focal, (-(1 - p_t) ** 2 * p_t.log())[band].mean())


def test_gradient_flows_from_band_pixels_only():
    torch.manual_seed(0)
    label = square_label()
    label[0, 0, :] = 7  # an ignored row, at the image border, next to class 0
    logits = torch.randn(1, 2, 12, 12, requires_grad=True)
    BoundaryLoss(width=1, ignore_index=7)(logits, label).backward()
    touched = logits.grad.abs().sum(1)[0] > 0
    torch.testing.assert_close(touched, boundary_band(label, 1, ignore_index=7)[0])
    assert not touched[0].any()


@pytest.mark.parametrize("label", [torch.zeros(2, 9, 9, dtype=torch.long), torch.full((1, 9, 9), 255)],
                         ids=["one class", "all ignored"])
def test_a_batch_without_edges_gives_a_zero_loss_that_still_backpropagates(label):
    assert not boundary_band(label, 2, ignore_index=255).any()
    logits = torch.randn(len(label), 2, 9, 9, requires_grad=True)
    loss = BoundaryLoss(width=2, ignore_index=255)(logits, label)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and not logits.grad.any()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label_dtype", [torch.long, torch.int32, torch.uint8])
@pytest.mark.parametrize("logits_dtype", [torch.float32, torch.bfloat16])
def test_devices_and_dtypes_are_kept(device, label_dtype, logits_dtype):
    label = square_label(dtype=label_dtype).to(device)
    before = label.clone()
    band = boundary_band(label, 1)
    assert band.dtype == torch.bool and band.device == label.device and band.shape == label.shape
    torch.testing.assert_close(label, before)  # the labels are not modified
    logits = torch.randn(1, 2, 12, 12, device=device, dtype=logits_dtype, requires_grad=True)
    loss = BoundaryLoss(width=1)(logits, label)
    assert loss.dtype == torch.float32 and loss.device == logits.device and loss.dim() == 0
    loss.backward()
    assert logits.grad.dtype == logits_dtype and logits.grad.device == logits.device


@pytest.mark.parametrize("width", [0, -1, 1.5, True])
def test_bad_widths_are_refused(width):
    with pytest.raises(ValueError, match="width"):
        BoundaryLoss(width=width)
    with pytest.raises(ValueError, match="width"):
        boundary_band(square_label(), width)


def test_float_or_colour_labels_are_refused():
    with pytest.raises(ValueError, match="integer class map"):
        boundary_band(square_label().float(), 1)
    with pytest.raises(ValueError, match="integer class map"):
        boundary_band(torch.zeros(1, 4, 4, 3, dtype=torch.long), 1)


def test_glnet_loss_adds_the_weighted_band_loss_of_the_main_output_only_when_weighted():
    from glmed.models.glnet import GLNet
    from glmed.models.losses import GLNetLoss

    torch.manual_seed(0)
    model = GLNet(2, "resnet18", "g2l", fpn_channels=8, global_size=64, patch_size=32, overlap=4)
    patches = torch.rand(2, 3, 32, 32)
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, 8:20, 10:24] = 1
    output = model(torch.rand(1, 3, 64, 64), patches, torch.tensor([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]),
                   torch.zeros(2, dtype=torch.long))
    global_labels = torch.zeros(1, 64, 64, dtype=torch.long)
    plain = GLNetLoss()(output, labels, global_labels)
    weighted = GLNetLoss(boundary_weight=0.5, boundary_width=2)(output, labels, global_labels)
    assert "boundary" not in plain.terms
    expected = 0.5 * BoundaryLoss(2)(output.logits, labels)
    torch.testing.assert_close(weighted.terms["boundary"], expected)
    torch.testing.assert_close(weighted.total, plain.total + expected)
    skipped = GLNetLoss(boundary_weight=0.5)(output, labels, global_labels, skip=["boundary"])
    assert "boundary" not in skipped.terms
    with pytest.raises(ValueError, match="boundary"):
        GLNetLoss(boundary_weight=-1.0)
