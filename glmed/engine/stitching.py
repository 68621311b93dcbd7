"""Turning low-resolution or per-patch network outputs into full-resolution label masks
without ever holding a full-resolution float tensor larger than needed."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from glmed.types import Size


def upsample_to_labels(logits: torch.Tensor, size: Size, rows_per_chunk: int = 512) -> np.ndarray:
    """Bilinearly upsample ``K×h×w`` scores to ``size`` and take the arg-max, a band of rows at a time.

    Equal to ``F.interpolate(..., mode="bilinear", align_corners=False).argmax(0)`` but
    the full-size ``K×H×W`` scores never exist at once: memory is one band of rows.

    Returns:
        ``H×W`` uint8 class indices (int32 when there are more than 256 classes).
    """
    height, width = int(size[0]), int(size[1])
    scores = logits.detach().float()[None]
    num_classes = scores.shape[1]
    out = np.empty((height, width), dtype=np.uint8 if num_classes <= 256 else np.int32)
    device = scores.device
    # Normalised sample positions of output pixel centres (align_corners=False convention).
    cols = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 - 1
    for start in range(0, height, rows_per_chunk):
        stop = min(start + rows_per_chunk, height)
        rows = (torch.arange(start, stop, device=device, dtype=torch.float32) + 0.5) / height * 2 - 1
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij")[::-1], dim=-1)[None]
        band = F.grid_sample(scores, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[start:stop] = band[0].argmax(0).cpu().numpy().astype(out.dtype)
    return out
