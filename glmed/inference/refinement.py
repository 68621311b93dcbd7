"""Refining only where it matters: which patches of a region the local branch runs on.

With ``refine="box"`` GLNet refines every patch of the region it segments (the whole image,
or each coarse-to-fine box). With ``refine="uncertain"`` it refines only the patches where the
region's context-free global pass is unsure, judged on the global branch's own map (``K×g×g``,
never at full resolution); every other patch takes that map's answer, sampled at the patch's
window the way the global maps are cropped for the local branch, and is merged like a refined
patch, in grid order.

A patch is *uncertain* when, on the global map within its footprint grown by one map pixel on
every side (so a class boundary just outside the patch counts too), the arg-max has more than
one class or (when a ``margin`` is given) some pixel's top-class probability is below ``1 - margin``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from glmed.conventions import Size
from glmed.models.sharing import crop_to_patches, footprints

REFINE_MODES = ("box", "uncertain")
"""Where GLNet runs its local branch: every patch of the region, or the uncertain ones only."""

DEFAULT_REFINE = "box"
"""``refine`` by default: every patch, as the paper does."""

DEFAULT_MARGIN: float | None = None
"""``margin`` by default: none, so a patch is skipped where one class covers it on the global map
with at least one map pixel to spare around it, whatever the probabilities.

A probability margin is an option, not the default, because the models glmed trains are not
calibrated for it: focal loss with the paper's γ = 6 stops pushing pixels that are already right
towards certainty. Measured 2026-11-30 on a coarse-to-fine ResNet18 model of
``benchmarks/augmentation_accuracy.py`` (hard dermoscopy images, 1024×1536): the global branch's
top-class probability had quantiles 0.50 / 0.51 / 0.53 / 0.55 / 0.59 (1st, 5th, 25th, 50th, 75th
percentile) over six test images, so every margin up to 0.4 refined all 54 patches of every image
(0.45 still refined 35–49), while the class-boundary rule alone refined 0–17 (8, 17, 0, 14, 14 and
10; the image with 0 had no coarse foreground at all). ``benchmarks/inference_speed.py``'s
ResNet50 model likewise skipped nothing at a margin of 0.1. For a calibrated model (cross-entropy
training, or temperature scaling), a margin such as 0.1 adds the places where the global branch
hesitates without changing its mind.
"""


def refine_problem(refine: str, margin: float | None) -> str | None:
    """Why ``refine`` or ``margin`` is out of range, naming the option; None when both are valid."""
    if refine not in REFINE_MODES:
        return f"unknown refine mode {refine!r}; choose one of {list(REFINE_MODES)}"
    if margin is None:
        return None
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 < margin < 1:
        return f"margin must be a number in (0, 1), got {margin!r}"
    return None


def uncertain_patches(global_logits: torch.Tensor, boxes: np.ndarray, margin: float | None) -> np.ndarray:
    """Which patches the global branch is not confident about, from its own map.

    Args:
        global_logits: ``K×h×w`` class scores of the region's context-free global pass.
        boxes: ``N×4`` patch boxes as fractions of the region
            (:meth:`~glmed.geometry.PatchGrid.normalized`).
        margin: a pixel is confident when its top-class probability is at least ``1 - margin``;
            None leaves probabilities out (only the one-class rule decides).

    Returns:
        ``N`` booleans, True for a patch whose footprint on the map
        (:func:`~glmed.geometry.footprint`) grown by one map pixel holds more than one arg-max
        class or an unconfident pixel.
    """
    probabilities = global_logits.detach().float().softmax(dim=0)
    top, best = probabilities.max(dim=0)
    unconfident = np.zeros(top.shape, dtype=bool) if margin is None else (top < 1 - margin).cpu().numpy()
    label = best.cpu().numpy()
    height, width = label.shape
    cells = footprints(torch.as_tensor(np.asarray(boxes), dtype=torch.float64), (height, width)).numpy()
    top_row, left = np.maximum(cells[:, 0] - 1, 0), np.maximum(cells[:, 1] - 1, 0)
    bottom, right = np.minimum(cells[:, 2] + 1, height), np.minimum(cells[:, 3] + 1, width)
    # A window holds one class exactly when no two neighbouring pixels inside it differ.
    across = label[:, 1:] != label[:, :-1]  # pixel (r, c) against (r, c + 1)
    down = label[1:, :] != label[:-1, :]  # pixel (r, c) against (r + 1, c)
    mixed = (_window_counts(across, top_row, left, bottom, right - 1) > 0) | (
        _window_counts(down, top_row, left, bottom - 1, right) > 0)
    return mixed | (_window_counts(unconfident, top_row, left, bottom, right) > 0)


def global_answers(
    global_logits: torch.Tensor, boxes: np.ndarray, patch_size: Size, chunk: int
) -> Iterator[torch.Tensor]:
    """The global branch's probabilities at each patch's window, one ``K×p×p`` CPU tensor per patch.

    The logits are sampled bilinearly at the patch window (as the local branch's global crops
    are), then turned into probabilities, ``chunk`` patches at a time; only those are ever held.

    Args:
        global_logits: ``K×h×w`` class scores of the region's global pass.
        boxes: ``N×4`` patch boxes as fractions of the region.
        patch_size: ``(height, width)`` of the patches, in region pixels.
        chunk: patches sampled at once.
    """
    scores = global_logits.detach().float()[None]
    fractions = torch.as_tensor(np.asarray(boxes), dtype=torch.float64)
    for start in range(0, len(fractions), chunk):
        batch = fractions[start : start + chunk]
        index = torch.zeros(len(batch), dtype=torch.long)
        yield from crop_to_patches(scores, batch, index, patch_size).softmax(dim=1).cpu()


def in_grid_order(
    refined: np.ndarray, refined_answers: Iterator[torch.Tensor], global_answers: Iterator[torch.Tensor]
) -> Iterator[torch.Tensor]:
    """Every patch's probabilities in grid order: the next refined answer or the next global one.

    Args:
        refined: ``N`` booleans in grid order, True where the local branch ran.
        refined_answers: the refined patches' probabilities, in grid order.
        global_answers: the other patches' probabilities, in grid order.
    """
    for is_refined in refined:
        yield next(refined_answers) if is_refined else next(global_answers)


def _window_counts(
    mask: np.ndarray, top: np.ndarray, left: np.ndarray, bottom: np.ndarray, right: np.ndarray
) -> np.ndarray:
    """How many True pixels of ``mask`` lie in each window ``[top, bottom) × [left, right)`` (empty: 0)."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = mask.cumsum(0).cumsum(1)
    bottom, right = np.maximum(bottom, top), np.maximum(right, left)
    return integral[bottom, right] - integral[top, right] - integral[bottom, left] + integral[top, left]
