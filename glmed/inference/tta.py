"""Test-time augmentation: the prediction averaged over flipped (and rotated) views, as probabilities.

GLNet's global view is square (the image resized to ``global_size × global_size``) and its
patches are tiled on a grid whose boxes are known as fractions of the image
(:meth:`~glmed.geometry.PatchGrid.normalized`). A dihedral transform *t* of the image (a flip, a
transposition, or their compositions, which include the 90° rotations) therefore maps each part
of the computation onto itself: the global view of *t*(image) is *t*(global view), the patch of
*t*(image) at *t*(box) is *t*(patch), and *t* maps a box's fractions to the fractions of the same
window in the transformed image. The inferer runs, for each view *t*, the global branch on
*t*(global view) (and, for bidirectional sharing, the collect pass over *t*(patches) at *t*(boxes)),
then the local branch on *t*(patch) at *t*(box), turns that patch's ``K×p×p`` probabilities back
with *t*'s inverse and averages the views' probabilities before they reach the merger. Each
patch's answer is thus the mean of what predicting on *t*(image) gives for that patch, turned
back; the merger, streaming to a slide and resuming work unchanged.

Which views: ``"flips"`` is the identity, the horizontal and the vertical flip (3 views), the
usual choice for dermoscopy and natural images; ``"dihedral"`` adds the 90° and 270° rotations,
the 180° rotation and both transpositions (8 views), for slides and aerial images, which have
no up or down. On an image far from square the rotated views show the global branch its
squashed view squashed the other way round (the global view is always square), which it never
saw in training; prefer ``"flips"`` there.

Cost: every global and local pass runs once per view (×3 or ×8 compute), and each view's global
maps stay in memory through the local passes (×3 or ×8 the global maps); patches are read once
for the local pass (and once per view for a bidirectional collect pass).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from glmed.conventions import Size

TTA_MODES = ("flips", "dihedral")
"""What ``tta=`` accepts (None: no test-time augmentation)."""


@dataclass(frozen=True)
class Dihedral:
    """One dihedral transform of the image plane: transpose first (when set), then flip rows, then columns.

    Applies to tensors whose last two dimensions are rows and columns (images, feature maps,
    probabilities) and to boxes given as fractions ``(row0, col0, row1, col1)`` of their image.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def is_identity(self) -> bool:
        """Whether this transform leaves everything as it is."""
        return not (self.transpose or self.flip_rows or self.flip_cols)

    @property
    def name(self) -> str:
        """The transform in words, e.g. ``"horizontal flip"`` or ``"rotation by 90°"``."""
        return _NAMES[(self.transpose, self.flip_rows, self.flip_cols)]

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (``...×H×W``) transformed; the very same tensor for the identity."""
        if self.transpose:
            tensor = tensor.transpose(-2, -1)
        if self.flip_rows:
            tensor = tensor.flip(-2)
        if self.flip_cols:
            tensor = tensor.flip(-1)
        return tensor

    def undo(self, tensor: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`apply`: a transformed ``...×H×W`` tensor back in the image's orientation."""
        if self.flip_cols:
            tensor = tensor.flip(-1)
        if self.flip_rows:
            tensor = tensor.flip(-2)
        if self.transpose:
            tensor = tensor.transpose(-2, -1)
        return tensor

    def boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``N×4`` boxes as fractions of the image, mapped to the same windows' fractions of the transformed image."""
        if self.is_identity:
            return boxes
        r0, c0, r1, c1 = boxes.unbind(dim=1)
        if self.transpose:
            r0, c0, r1, c1 = c0, r0, c1, r1
        if self.flip_rows:
            r0, r1 = 1 - r1, 1 - r0
        if self.flip_cols:
            c0, c1 = 1 - c1, 1 - c0
        return torch.stack((r0, c0, r1, c1), dim=1)

    def size(self, size: Size) -> Size:
        """A ``(height, width)`` as the transform shows it (swapped by a transposition)."""
        return (size[1], size[0]) if self.transpose else (size[0], size[1])


IDENTITY = Dihedral()

_NAMES = {
    (False, False, False): "identity",
    (False, False, True): "horizontal flip",
    (False, True, False): "vertical flip",
    (False, True, True): "rotation by 180°",
    (True, False, False): "transposition",
    (True, False, True): "rotation by 90° clockwise",
    (True, True, False): "rotation by 90° anticlockwise",
    (True, True, True): "anti-transposition",
}

VIEWS = {
    "flips": (IDENTITY, Dihedral(flip_cols=True), Dihedral(flip_rows=True)),
    "dihedral": tuple(Dihedral(*flags) for flags in itertools.product((False, True), repeat=3)),
}
"""The views of each ``tta`` mode, the identity first."""


def tta_problem(tta: str | None) -> str | None:
    """Why ``tta`` is not a test-time augmentation mode, or None when it is one (or None)."""
    if tta is None or tta in TTA_MODES:
        return None
    return f"unknown tta {tta!r}; choose one of {list(TTA_MODES)} or None (no test-time augmentation)"


def views_for(tta: str | None) -> tuple[Dihedral, ...]:
    """The transforms a prediction averages over: the identity alone without ``tta``."""
    return (IDENTITY,) if tta is None else VIEWS[tta]


def combined_scores(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """One ``K×h×w`` map of class scores from each view's global logits, all in the image's orientation.

    A single view's logits come back as they are (the prediction without test-time
    augmentation, bit for bit). Several views give the log of their mean probabilities: their
    softmax is that mean, and their arg-max and bilinear upsampling rank the classes as the
    mean does, so they stand in for logits wherever a global answer is read (the coarse mask,
    coarse-to-fine's boxes, ``refine="uncertain"``'s decision).
    """
    if len(logits) == 1:
        return logits[0]
    mean = torch.stack([view.float().softmax(dim=0) for view in logits]).mean(dim=0)
    return mean.clamp(min=torch.finfo(mean.dtype).tiny).log()


def mean_answers(answers: Sequence[Iterator[torch.Tensor]]) -> Iterator[torch.Tensor]:
    """Per-patch probabilities averaged over views: one stream of tensors per view, in the same order.

    A single stream is passed through as it is.
    """
    if len(answers) == 1:
        yield from answers[0]
        return
    for per_view in zip(*answers, strict=True):
        yield torch.stack(per_view).mean(dim=0)


ROTATION_ASPECT_LIMIT = 1.5
"""Above this long-to-short side ratio, ``"dihedral"``'s rotated views get a note: their square
global view is squashed along the other axis than in training."""


def rotation_aspect_note(tta: str, size: Size) -> str | None:
    """A note when ``"dihedral"`` rotates an image far from square (views the model never saw); else None."""
    ratio = max(size) / max(min(size), 1)
    if tta != "dihedral" or ratio <= ROTATION_ASPECT_LIMIT:
        return None
    return (f"test-time augmentation (dihedral) rotated an image of {size[0]}×{size[1]} (sides {ratio:.1f}:1): its "
            "rotated views show the global branch the square global view squashed along the other axis than in "
            "training, which can lower the averaged answer; tta='flips' avoids it")


def tta_note(tta: str, views: Sequence[Dihedral], reads_patches: bool) -> str:
    """What test-time augmentation did and cost, for ``result.notes``."""
    passes = "global and local passes" if reads_patches else "global passes"
    return (f"test-time augmentation ({tta}): probabilities averaged over {len(views)} views "
            f"({', '.join(view.name for view in views)}); {passes} ×{len(views)}")
