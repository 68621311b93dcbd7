"""Moving feature maps between the branches: global→local crops and local→global stitching.

Patches are described by boxes given as fractions of their image (``row0, col0, row1,
col1`` in ``[0, 1]``, see :meth:`glmed.geometry.PatchGrid.normalized`) and by the index of
the image each patch belongs to, so one batch may mix patches of several images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from glmed.conventions import Size
from glmed.models.fpn import ENCODER_POINTS


def crop_to_patches(
    global_map: torch.Tensor,
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    size: Size,
) -> torch.Tensor:
    """Cut each patch's window out of its image's global map and resample it to ``size``.

    Bilinear sampling at the exact (fractional) window, so a patch whose window falls
    between global-map pixels gets exactly its part of the map.

    Nothing is read back from a GPU, so the call queues its work without waiting for the
    device. With one image (inference) every window is sampled in one call, with their grids
    stacked along the rows, and ``image_index`` is not read at all. With several images, on the
    CPU each image's windows are sampled together (reading the index costs nothing there); on
    a GPU each patch samples its own image's map, gathered on the device (a copy of that map
    per patch, as large as the crops themselves, which training keeps for the backward pass).
    All three give the same values, bit for bit: each output pixel's sampling does not depend
    on how the windows are batched.

    Args:
        global_map: ``B×C×h×w`` maps of the downsampled images.
        boxes: ``N×4`` patch boxes as fractions of their image.
        image_index: ``N`` index into ``B`` of each patch's image (not checked against ``B``:
            a check would wait for the device).
        size: ``(height, width)`` of the output maps (the local branch's map size).

    Returns:
        ``N×C×size`` crops, in the order of ``boxes``, contiguous.
    """
    # Windows in at least float32: a half-precision box edge would be off by a fraction of a
    # map pixel, and under autocast grid_sample returns float32 whatever the map's type.
    exact = torch.promote_types(global_map.dtype, torch.float32)
    boxes = boxes.to(device=global_map.device, dtype=exact, non_blocking=True)
    height, width = int(size[0]), int(size[1])
    count = boxes.shape[0]
    # Map output coordinates in [-1, 1] onto each window (align_corners=False convention).
    theta = torch.zeros(count, 2, 3, dtype=exact, device=global_map.device)
    theta[:, 0, 0] = boxes[:, 3] - boxes[:, 1]
    theta[:, 0, 2] = boxes[:, 1] + boxes[:, 3] - 1
    theta[:, 1, 1] = boxes[:, 2] - boxes[:, 0]
    theta[:, 1, 2] = boxes[:, 0] + boxes[:, 2] - 1
    grid = F.affine_grid(theta, [count, 1, height, width], align_corners=False)
    if global_map.shape[0] == 1:
        crops = _sample_stacked(global_map.to(exact), grid)
    elif global_map.device.type == "cpu":  # nothing to wait for: each image's windows in one call, no copies
        crops = _sample_per_image(global_map.to(exact), grid, image_index)
    else:
        crops = _sample_gathered(global_map.to(exact), grid, image_index)
    return crops.to(global_map.dtype, memory_format=torch.contiguous_format).contiguous()


def _sample_stacked(image_map: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """One ``1×C×h×w`` map sampled at ``N`` grids in one call, their rows stacked: ``N×C×H×W`` (a view)."""
    count, height, width, _ = grid.shape
    sampled = F.grid_sample(image_map, grid.reshape(1, count * height, width, 2), mode="bilinear",
                            padding_mode="border", align_corners=False)
    return sampled.reshape(image_map.shape[1], count, height, width).transpose(0, 1)


def _sample_per_image(global_map: torch.Tensor, grid: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """Each image's windows stacked into one call (the index is read on the host)."""
    image_index = image_index.to(global_map.device)
    count, height, width, _ = grid.shape
    crops = global_map.new_empty(count, global_map.shape[1], height, width)
    for image in torch.unique(image_index).tolist():
        chosen = (image_index == image).nonzero(as_tuple=True)[0]
        crops[chosen] = _sample_stacked(global_map[image : image + 1], grid[chosen])
    return crops


def _sample_gathered(global_map: torch.Tensor, grid: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """Each window sampled from its own image's map, gathered on the map's device (nothing read back)."""
    sources = global_map.index_select(0, image_index.to(global_map.device, non_blocking=True))
    return F.grid_sample(sources, grid, mode="bilinear", padding_mode="border", align_corners=False)


def footprints(boxes: torch.Tensor, grid_size: Size) -> torch.Tensor:
    """:func:`glmed.geometry.footprint` of many boxes at once: ``N×4`` whole cells of a ``grid_size`` grid.

    Computed in float64 with the same operations as the scalar function (so the same cells),
    on the boxes' own device.
    """
    height, width = int(grid_size[0]), int(grid_size[1])
    scale = torch.tensor([height, width, height, width], dtype=torch.float64, device=boxes.device)
    rounded = torch.floor(boxes.to(torch.float64) * scale + 0.5).to(torch.int64)
    top = rounded[:, 0].clamp(0, height - 1)
    left = rounded[:, 1].clamp(0, width - 1)
    bottom = torch.maximum(rounded[:, 2].clamp(max=height), top + 1)
    right = torch.maximum(rounded[:, 3].clamp(max=width), left + 1)
    return torch.stack([top, left, bottom, right], dim=1)


class LocalToGlobalCanvas:
    """Accumulates local maps, patch by patch, onto their images' global-map grids.

    Each patch's map is resampled to the patch's footprint on the global grid and added
    there; :meth:`maps` divides by how many patches covered each cell, so overlaps are
    averaged. Holds only global-resolution canvases, never full-resolution ones, so the
    collect pass of bidirectional sharing costs little memory whatever the image size.

    Args:
        sizes: for each shared point, ``(B, C, h, w)`` of the global map there.
        device, dtype: where the canvases live and the type of the stitched maps; sums are
            kept in at least float32, so half-precision models average many patches accurately.
    """

    def __init__(self, sizes: Mapping[str, torch.Size], device: torch.device, dtype: torch.dtype) -> None:
        self._dtype = dtype
        summing = torch.promote_types(dtype, torch.float32)
        self._sums = {name: torch.zeros(tuple(shape), device=device, dtype=summing) for name, shape in sizes.items()}
        self._counts = {
            name: torch.zeros((shape[0], 1, shape[2], shape[3]), device=device, dtype=summing)
            for name, shape in sizes.items()
        }

    def add(self, local_maps: Mapping[str, torch.Tensor], boxes: torch.Tensor, image_index: torch.Tensor) -> None:
        """Place a batch of patches' maps (``N×C×h×w`` per point) at their boxes.

        The cells a patch covers on each grid (:func:`footprints`, all patches at once) set the
        size its map is resized to, which the host must know to launch the resizing. Boxes and
        index given on the host, as the inferer passes them, therefore cost nothing; given on a
        GPU they are copied back once per call, which waits for the device.

        Args:
            local_maps: the local branch's maps at (at least) every point of the canvas.
            boxes: ``N×4`` patch boxes as fractions of their image, on any device.
            image_index: ``N`` index of each patch's image, on any device.
        """
        host_boxes = boxes.detach().to("cpu")
        index_list = image_index.detach().to("cpu").tolist()
        cells: dict[tuple[int, int], list[list[int]]] = {}
        for name, canvas in self._sums.items():
            counts = self._counts[name]
            grid_size = (int(canvas.shape[2]), int(canvas.shape[3]))
            if grid_size not in cells:
                cells[grid_size] = footprints(host_boxes, grid_size).tolist()
            local = local_maps[name].to(canvas.dtype)
            for patch, ((r0, c0, r1, c1), image) in enumerate(zip(cells[grid_size], index_list, strict=True)):
                resized = F.interpolate(
                    local[patch : patch + 1], size=(r1 - r0, c1 - c0), mode="bilinear", antialias=True,
                    align_corners=False,
                )
                canvas[image, :, r0:r1, c0:c1] += resized[0]
                counts[image, :, r0:r1, c0:c1] += 1
            del local  # a float32 copy of a half-precision model's maps: one point's at a time

    def maps(self) -> dict[str, torch.Tensor]:
        """The stitched maps: average of the patches covering each cell (0 where none did)."""
        return {name: (total / self._counts[name].clamp(min=1)).to(self._dtype) for name, total in self._sums.items()}

    @classmethod
    def like(cls, global_maps: Mapping[str, torch.Tensor], points: Iterable[str]) -> LocalToGlobalCanvas:
        """Empty canvases shaped like the given global maps at ``points``."""
        points = list(points)
        reference = global_maps[points[0]]
        return cls({p: global_maps[p].shape for p in points}, reference.device, reference.dtype)


def collect_local_context(
    model: Any,
    global_maps: Mapping[str, torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    keep_encoded: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Bidirectional sharing's collect pass: every patch's local maps stitched onto its image's global grid.

    The result is the global branch's local→global input.

    The one implementation, used by the inferer (patches read batch by batch from an image)
    and the trainer (a collated batch's patches in device-sized chunks). The local branch
    computes only the maps the canvas reads (``points=`` of :meth:`GLNet.local_features`),
    the same bit for bit as a full pass's, with about a fifth fewer FLOPs.

    Args:
        model: a :class:`~glmed.models.glnet.GLNet` with bidirectional sharing.
        global_maps: its global branch's maps without local context (the first pass).
        batches: ``(patches N×C×p×p, boxes N×4 as fractions of their image, image index N)``;
            the patches on the model's device, boxes and index best on the host (as the
            inferer and trainer give them): the local branch places its crops' windows there,
            and the canvas's footprints are computed there; the stitched maps are then the
            first thing read back from the device.
        keep_encoded: called with each batch's number (from 0) and its encoder maps (``c2``–``c5``),
            which the final pass may take instead of running the encoder again (the inferer's
            ``reuse_encoder``); None lets them go with the batch.
    """
    points = model.sharing.local_to_global_points
    canvas = LocalToGlobalCanvas.like(global_maps, points)
    for number, (patches, boxes, image_index) in enumerate(batches):
        # Only the maps the canvas reads: the refining convolutions and the final map are skipped.
        # Boxes and index go in as given: the local branch reads them on the host.
        local_maps = model.local_features(patches, global_maps, boxes, image_index, points=points)
        if keep_encoded is not None:
            keep_encoded(number, {point: local_maps[point] for point in ENCODER_POINTS})
        canvas.add(local_maps, boxes, image_index)
        del local_maps
    return canvas.maps()
