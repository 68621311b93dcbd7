"""Moving feature maps between the branches: global→local crops and local→global stitching.

Patches are described by boxes given as fractions of their image (``row0, col0, row1,
col1`` in ``[0, 1]``, see :meth:`glmed.geometry.PatchGrid.normalized`) and by the index of
the image each patch belongs to, so one batch may mix patches of several images.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from glmed.conventions import Size
from glmed.geometry import footprint


def crop_to_patches(
    global_map: torch.Tensor,
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    size: Size,
) -> torch.Tensor:
    """Cut each patch's window out of its image's global map and resample it to ``size``.

    Bilinear sampling at the exact (fractional) window, so a patch whose window falls
    between global-map pixels gets exactly its part of the map.

    Args:
        global_map: ``B×C×h×w`` maps of the downsampled images.
        boxes: ``N×4`` patch boxes as fractions of their image.
        image_index: ``N`` index into ``B`` of each patch's image.
        size: ``(height, width)`` of the output maps (the local branch's map size).

    Returns:
        ``N×C×size`` crops, in the order of ``boxes``.
    """
    # Windows in at least float32: a half-precision box edge would be off by a fraction of a
    # map pixel, and under autocast grid_sample returns float32 whatever the map's type.
    exact = torch.promote_types(global_map.dtype, torch.float32)
    boxes = boxes.to(device=global_map.device, dtype=exact)
    image_index = image_index.to(global_map.device)
    height, width = int(size[0]), int(size[1])
    count = boxes.shape[0]
    # Map output coordinates in [-1, 1] onto each window (align_corners=False convention).
    theta = torch.zeros(count, 2, 3, dtype=exact, device=global_map.device)
    theta[:, 0, 0] = boxes[:, 3] - boxes[:, 1]
    theta[:, 0, 2] = boxes[:, 1] + boxes[:, 3] - 1
    theta[:, 1, 1] = boxes[:, 2] - boxes[:, 0]
    theta[:, 1, 2] = boxes[:, 0] + boxes[:, 2] - 1
    grid = F.affine_grid(theta, [count, 1, height, width], align_corners=False)
    out = global_map.new_empty(count, global_map.shape[1], height, width)
    for image in torch.unique(image_index).tolist():
        chosen = (image_index == image).nonzero(as_tuple=True)[0]
        # Sample all of this image's windows in one call: stack their grids along the rows.
        stacked = grid[chosen].reshape(1, len(chosen) * height, width, 2)
        sampled = F.grid_sample(
            global_map[image : image + 1].to(exact), stacked, mode="bilinear", padding_mode="border",
            align_corners=False,
        )
        out[chosen] = sampled.reshape(global_map.shape[1], len(chosen), height, width).transpose(0, 1).to(out.dtype)
    return out


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
        """Place a batch of patches' maps (``N×C×h×w`` per point) at their boxes."""
        boxes_list = boxes.detach().cpu().double().tolist()
        index_list = image_index.detach().cpu().tolist()
        for name, canvas in self._sums.items():
            counts = self._counts[name]
            grid_size = (canvas.shape[2], canvas.shape[3])
            local = local_maps[name].to(canvas.dtype)
            for patch, (box, image) in enumerate(zip(boxes_list, index_list, strict=True)):
                r0, c0, r1, c1 = footprint(box, (1.0, 1.0), grid_size)
                resized = F.interpolate(
                    local[patch : patch + 1], size=(r1 - r0, c1 - c0), mode="bilinear", antialias=True,
                    align_corners=False,
                )
                canvas[image, :, r0:r1, c0:c1] += resized[0]
                counts[image, :, r0:r1, c0:c1] += 1

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
) -> dict[str, torch.Tensor]:
    """Bidirectional sharing's collect pass: every patch's local maps stitched onto its image's global grid.

    The result is the global branch's local→global input.

    The one implementation, used by the inferer (patches read batch by batch from an image)
    and the trainer (a collated batch's patches in device-sized chunks).

    Args:
        model: a :class:`~glmed.models.glnet.GLNet` with bidirectional sharing.
        global_maps: its global branch's maps without local context (the first pass).
        batches: ``(patches N×C×p×p, boxes N×4 as fractions of their image, image index N)``,
            on the model's device.
    """
    canvas = LocalToGlobalCanvas.like(global_maps, model.sharing.local_to_global_points)
    for patches, boxes, image_index in batches:
        canvas.add(model.local_features(patches, global_maps, boxes, image_index), boxes, image_index)
    return canvas.maps()
