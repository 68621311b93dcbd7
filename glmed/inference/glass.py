"""Skipping glass: which patches of a region hold tissue, what the others answer, and boxes kept on tissue.

Most of a whole slide is empty glass. Given the slide's :class:`~glmed.io.tissue.TissueMask`,
:class:`~glmed.inference.inferer.GlobalLocalInferer` leaves every patch without a single tissue
pixel (at the mask's resolution) out of the local branch: it is never read at full resolution,
never collected for bidirectional sharing, and it answers background (class 0) with certainty,
merged in grid order like any other patch. Patches with some tissue, even a sliver at their edge,
are segmented as without the mask, so what they write is unchanged where they do not overlap glass.

Coarse-to-fine on a slide refines regions on tissue only (:func:`boxes_on_tissue`): its coarse
foreground is first kept to tissue (what the global branch calls foreground on glass is a
mistake), and each relaxed box is then cut to the pieces of tissue it covers, one box per piece,
so a box never spans the glass between two pieces and its own global view shows tissue, not glass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from glmed.conventions import Box, Size
from glmed.geometry import PatchGrid, grow_to_size, merge_overlapping
from glmed.io.tissue import TissueMask

TISSUE_BOX_MARGIN = 0.25
"""Glass kept around each piece of tissue when a coarse-to-fine box is cut to it, as a fraction of the
patch side (127 pixels, 32 µm at 40x, for the paper's 508): foreground at the tissue's edge is then not
at a side of its box, where :func:`~glmed.inference.notes.box_edge_notes` would take it for cut."""


def tissue_patches(tissue: TissueMask | None, grid: PatchGrid, region: Box) -> np.ndarray:
    """Which patches of ``grid`` hold any tissue; all of them without a mask.

    Args:
        tissue: the slide's tissue, in level-0 pixels of the whole slide, or None.
        grid: patches of ``region``, in the region's own pixels.
        region: where the region lies on the slide (the whole slide, or a coarse-to-fine box).

    Returns:
        ``N`` bools in grid order, False for a patch of glass only.
    """
    if tissue is None or not len(grid):
        return np.ones(len(grid), dtype=bool)
    offset = np.array([region[0], region[1], region[0], region[1]], dtype=np.int64)
    return tissue.contains_tissue(grid.boxes + offset)


def background_answer(num_classes: int, patch_size: Size) -> torch.Tensor:
    """A glass patch's ``K×p×p`` probabilities: class 0 (background) with certainty."""
    answer = torch.zeros((num_classes, int(patch_size[0]), int(patch_size[1])), dtype=torch.float32)
    answer[0] = 1.0
    return answer


def with_background(
    glass: np.ndarray, global_answers: Iterator[torch.Tensor], background: torch.Tensor
) -> Iterator[torch.Tensor]:
    """The answers of the patches the local branch skips, in grid order: ``background`` for glass, else the global one.

    Args:
        glass: one bool per skipped patch, in grid order, True for glass.
        global_answers: the global branch's answers of the skipped patches on tissue, in grid order.
        background: what every glass patch answers (:func:`background_answer`; never modified).
    """
    for is_glass in glass:
        yield background if is_glass else next(global_answers)


def boxes_on_tissue(boxes: Sequence[Box], tissue: TissueMask, min_size: Size, margin: int) -> list[Box]:
    """Coarse-to-fine's boxes cut to the pieces of tissue they cover.

    Each box is intersected with the box of every piece of tissue
    (:meth:`~glmed.io.tissue.TissueMask.component_boxes`, widened by ``margin`` and merged where
    they overlap); each non-empty intersection is grown to at least ``min_size`` (one patch), and
    overlapping results are merged. A box over glass alone disappears.

    Returns:
        Disjoint boxes in level-0 pixels, sorted.
    """
    pieces = tissue.component_boxes(margin=margin, min_size=min_size)
    cut = []
    for box in boxes:
        for piece in pieces:
            r0, c0 = max(box[0], piece[0]), max(box[1], piece[1])
            r1, c1 = min(box[2], piece[2]), min(box[3], piece[3])
            if r0 < r1 and c0 < c1:
                cut.append(grow_to_size((r0, c0, r1, c1), min_size, tissue.image_size))
    return merge_overlapping(cut)


def glass_note(glass: int, considered: int, tissue: TissueMask) -> str:
    """What the tissue mask did, for ``result.notes``: the tissue's share and the patches of glass skipped."""
    share = 100 * tissue.fraction
    share_text = "<0.1" if 0 < share < 0.05 else f"{share:.1f}"
    return (f"tissue covers {share_text}% of the slide; {glass} of {considered} patches were glass only, "
            "written as background without being read (tissue=False, or --no-tissue-mask, segments every patch)")
