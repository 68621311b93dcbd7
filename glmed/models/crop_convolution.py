"""A convolution of the global map's patch crops, computed at the global map's resolution.

Global→local sharing feeds the local branch, at every shared point, a crop of the global
map at the patch's box, resampled bilinearly up to the local map's size (about 13× at the
paper's sizes on an ISIC image: a 508-pixel patch covers some 10×10 cells of the global
map's stride-4 grid, resampled to 127×127), and a convolution (the partner half of
:class:`glmed.models.fpn.FusedConv`) reads it. Done in that order, the convolution runs at
the local map's full size over channels that hold nothing but a bilinear blend of a few
global cells: a third of a ResNet50-FPN local pass's FLOPs on such an image.

Both steps are linear, so they can be swapped. For a ``k×k`` kernel ``W`` and the crop
``P = R·G·Cᵀ`` (per channel: ``R`` and ``C`` are the row and column interpolation
matrices of :func:`glmed.models.sharing.crop_to_patches`, bilinear with border padding),

    conv(P)[o, y, x] = Σ_(i, j) Σ_(r, s) R[y + i - h, r] · C[x + j - h, s] · (W[:, :, i, j] · G)[o, r, s]

with ``h = k // 2`` and rows or columns outside the patch weighted zero (the convolution's
zero padding). ``W[:, :, i, j] · G`` is a 1×1 convolution over the few global cells the box
reads, and the two contractions with ``R`` and ``C`` are small matrix products. The result
equals the crop-then-convolve order up to float rounding (tested in float64 to 1e-10 of the
output's scale, gradients too; in float32 it is the closer of the two to the exact values, as
its windows are placed in float64), at a few per cent of its cost. PyTorch has no operator for this
(it is GLNet's own sharing), hence the hand-written contraction; when the box covers so
many global cells that the windowed order would not be cheaper, the crop is convolved
directly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from glmed.conventions import Size
from glmed.models.sharing import crop_to_patches

WINDOWED_AREA_RATIO = 0.25
"""The windowed order runs when the global window's area is at most this share of the local
map's; above it (a box spanning as many global cells as the patch has map cells), the
crop is convolved as it is."""


class CropResampling(NamedTuple):
    """Where each patch's window lies on a global map, and its bilinear weights (host, float64).

    Depends only on the boxes, the global map's size, the local map's size and the kernel, so a
    local pass computes it once per pyramid level and kernel size and reuses it (a level's 3×3
    smoothing and refining partners share one; ``convolve_crops``'s ``plans``).
    """

    windowed: bool
    """False where the windowed order would not be cheaper: the crop is convolved as it is."""
    row_starts: list[int]
    window_rows: int
    col_starts: list[int]
    window_cols: int
    row_taps: torch.Tensor
    """``N×k×H×window_rows``: per tap row, the weights of the window's rows at each output row."""
    col_taps: torch.Tensor
    """``N×k×W×window_cols``: the same along the columns."""


def crop_resampling(boxes: torch.Tensor, map_size: Size, size: Size, kernel: int) -> CropResampling:
    """The :class:`CropResampling` of ``boxes`` (``N×4`` fractions) on a ``map_size`` global map."""
    height, width = int(size[0]), int(size[1])
    host_boxes = boxes.detach().to("cpu", torch.float64)
    pad = kernel // 2
    rows = _sampling_weights(host_boxes[:, 0], host_boxes[:, 2], height, int(map_size[0]), pad)
    cols = _sampling_weights(host_boxes[:, 1], host_boxes[:, 3], width, int(map_size[1]), pad)
    row_starts, window_rows = _windows(rows)
    col_starts, window_cols = _windows(cols)
    return CropResampling(
        windowed=window_rows * window_cols <= WINDOWED_AREA_RATIO * height * width,
        row_starts=row_starts, window_rows=window_rows, col_starts=col_starts, window_cols=window_cols,
        row_taps=_shifted(_cut(rows, row_starts, window_rows), kernel, height),
        col_taps=_shifted(_cut(cols, col_starts, window_cols), kernel, width),
    )


def convolve_crops(
    global_map: torch.Tensor,
    weight: torch.Tensor,
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    size: Size,
    plans: dict[tuple[Size, Size, int], CropResampling] | None = None,
) -> torch.Tensor:
    """``conv2d(crop_to_patches(global_map, boxes, image_index, size), weight, padding=k // 2)``, cheaply.

    Args:
        global_map: ``B×C×h×w`` global maps.
        weight: ``O×C×k×k`` kernel (odd ``k``, stride 1, no bias: a partner convolution).
        boxes: ``N×4`` patch boxes as fractions of their image. Read on the host: pass them
            there (the inferer and trainer do), else a GPU tensor is copied back once.
        image_index: ``N`` index into ``B`` of each patch's image (not read when ``B`` is 1).
        size: ``(height, width)`` of the local map.
        plans: a dict the caller keeps over calls with the same ``boxes`` (one local pass):
            each (global map size, local size, kernel)'s :class:`CropResampling` is computed
            once there. None computes it for this call alone.

    Returns:
        ``N×O×size`` in the global map's dtype, on its device.
    """
    kernel = int(weight.shape[-1])
    if kernel % 2 == 0 or int(weight.shape[-2]) != kernel:
        raise ValueError(f"convolve_crops needs a square kernel of odd size, got {tuple(weight.shape[-2:])}")
    height, width = int(size[0]), int(size[1])
    map_size = (int(global_map.shape[-2]), int(global_map.shape[-1]))
    key = (map_size, (height, width), kernel)
    plan = None if plans is None else plans.get(key)
    if plan is None:
        plan = crop_resampling(boxes, map_size, (height, width), kernel)
        if plans is not None:
            plans[key] = plan
    if not plan.windowed:
        crops = crop_to_patches(global_map, boxes, image_index, size)
        return F.conv2d(crops, weight.to(crops.dtype), padding=kernel // 2)

    window_rows, window_cols = plan.window_rows, plan.window_cols
    count = len(plan.row_starts)
    images = [0] * count if global_map.shape[0] == 1 else image_index.detach().cpu().tolist()
    windows = torch.stack([
        global_map[image, :, r0 : r0 + window_rows, c0 : c0 + window_cols]
        for image, r0, c0 in zip(images, plan.row_starts, plan.col_starts, strict=True)
    ])
    out_channels = int(weight.shape[0])
    # Every tap's 1×1 convolution at once: output channel (i·k + j)·O + o is W[o, :, i, j].
    per_tap = weight.permute(2, 3, 0, 1).reshape(kernel * kernel * out_channels, -1, 1, 1)
    taps = F.conv2d(windows, per_tap.to(windows.dtype))
    taps = taps.reshape(count, kernel, kernel, out_channels, window_rows, window_cols)
    # The resampling runs in at least float32, as the crop order's grid_sample does: bilinear
    # weights rounded to bfloat16 would blur the crop by up to 0.4% under autocast.
    device, exact = taps.device, torch.promote_types(taps.dtype, torch.float32)
    row_taps = plan.row_taps.to(device, exact, non_blocking=True)
    col_taps = plan.col_taps.to(device, exact, non_blocking=True)
    with torch.autocast(device.type, enabled=False):
        # Σ_j over columns first, as one matrix product per tap row i: (O·r)×(k·s) by (k·s)×W.
        by_row_tap = taps.to(exact).permute(0, 1, 3, 4, 2, 5).reshape(count, kernel, out_channels * window_rows, -1)
        across = torch.matmul(by_row_tap, col_taps.permute(0, 1, 3, 2).reshape(count, 1, -1, width))
        # Then Σ_i over rows, one product per channel: H×(k·r) by (k·r)×W, straight into N×O×H×W.
        across = across.reshape(count, kernel, out_channels, window_rows, width).transpose(1, 2)
        across = across.reshape(count, out_channels, kernel * window_rows, width)
        out = torch.matmul(row_taps.transpose(1, 2).reshape(count, 1, height, -1), across)
    return out.to(taps.dtype)


def _sampling_weights(starts: torch.Tensor, ends: torch.Tensor, out_len: int, in_len: int, pad: int) -> torch.Tensor:
    """``N×(out_len + 2·pad)×in_len`` bilinear weights of :func:`crop_to_patches` along one axis.

    Row ``pad + t`` holds the weights of output position ``t``; the ``pad`` rows on either side
    (positions just outside the patch, which a ``k×k`` convolution reads as zero padding) are
    zero. The positions follow ``affine_grid`` and ``grid_sample`` with ``align_corners=False``
    and border padding, in float64.
    """
    positions = torch.arange(-pad, out_len + pad, dtype=torch.float64)
    base = (2 * positions + 1) / out_len - 1
    normalised = (ends - starts)[:, None] * base + (starts + ends - 1)[:, None]
    pixel = (((normalised + 1) * in_len - 1) / 2).clamp(0, in_len - 1)
    low = pixel.floor()
    high_share = pixel - low
    low_index = low.long()
    high_index = (low_index + 1).clamp(max=in_len - 1)  # at the last cell its share is 0
    weights = torch.zeros(len(starts), out_len + 2 * pad, in_len, dtype=torch.float64)
    weights.scatter_add_(2, low_index[..., None], (1 - high_share)[..., None])
    weights.scatter_add_(2, high_index[..., None], high_share[..., None])
    if pad:
        weights[:, :pad] = 0
        weights[:, -pad:] = 0
    return weights


def _windows(weights: torch.Tensor) -> tuple[list[int], int]:
    """Each patch's first global cell with a weight, and one window length that covers every patch.

    One length for all keeps the windows stackable; a window that would run past the map's
    end starts earlier instead (its extra cells get zero weight).
    """
    in_len = int(weights.shape[-1])
    used = (weights != 0).any(dim=1)  # N×in_len
    first = used.int().argmax(dim=1)
    last = in_len - 1 - used.flip(1).int().argmax(dim=1)
    length = int((last - first + 1).max()) if len(first) else 1
    starts = [min(int(f), in_len - length) for f in first]
    return starts, length


def _cut(weights: torch.Tensor, starts: list[int], length: int) -> torch.Tensor:
    """Each patch's weights restricted to its window: ``N×L×length``."""
    return torch.stack([w[:, s : s + length] for w, s in zip(weights, starts, strict=True)])


def _shifted(weights: torch.Tensor, kernel: int, out_len: int) -> torch.Tensor:
    """``N×k×out_len×window``: for tap ``i``, the weights of positions ``t + i - k // 2``."""
    return torch.stack([weights[:, i : i + out_len] for i in range(kernel)], dim=1)
