"""Coarse-to-fine GLNet (paper section 3.3): segment coarsely, then refine inside a box.

The global branch segments the whole image downsampled; the foreground's box, relaxed
until foreground : background inside is about ``target_ratio`` (1:1 in the paper), is then
segmented as an image of its own — its downsampled view through the global branch, its
full-resolution patches through the local branch, with the mode's deep sharing — and
everything outside it is background.

Stage 2's global branch *is* stage 1's (shared weights). The box view is the same kind of
picture at a closer zoom, so one branch trained on whole images and on (jittered) boxes
serves both, halves the parameters, and gains from the box's smaller downsampling loss,
which the paper credits for part of the improvement. The inference order lives in
:class:`glmed.inference.inferer.GlobalLocalInferer`; the box rule in
:func:`glmed.geometry.coarse_to_fine_boxes`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from glmed.models.glnet import GLNet, GLNetConfig, Sharing


@dataclass(frozen=True)
class CoarseToFineConfig(GLNetConfig):
    """A GLNet's configuration plus the box rule.

    Attributes:
        target_ratio: foreground : background inside the relaxed box (1.0 = 1:1).
        per_component: one box per connected lesion (merged when they overlap) instead of
            one box around all foreground.
    """

    target_ratio: float = 1.0
    per_component: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.mode.has_global or not self.mode.has_local:
            raise ValueError(f"coarse-to-fine needs both branches; sharing {self.sharing!r} lacks one "
                             f"(choose one of none, g2l_shallow, g2l, bidirectional)")
        if not self.target_ratio > 0:
            raise ValueError(f"target_ratio must be positive, got {self.target_ratio}")


class CoarseToFineGLNet(GLNet):
    """A GLNet whose inference refines only the relaxed foreground box.

    Takes every :class:`~glmed.models.glnet.GLNet` argument, plus:

    Args:
        target_ratio: foreground : background wanted inside the box (paper: 1.0).
        per_component: a box per connected component rather than one around all.

    Training uses the inherited methods unchanged: the global stage on whole downsampled
    images, the local and bidirectional stages on box crops (see
    :mod:`glmed.data.samples`); :func:`glmed.predict` does the two-stage inference.
    """

    def __init__(
        self,
        num_classes: int = 2,
        backbone: str = "resnet50",
        sharing: str | Sharing = "bidirectional",
        *,
        target_ratio: float = 1.0,
        per_component: bool = False,
        fpn_channels: int = 256,
        in_channels: int = 3,
        global_size: int = 508,
        patch_size: int = 508,
        overlap: int = 50,
        pretrained_backbone: str | os.PathLike | None = None,
    ) -> None:
        config = CoarseToFineConfig(
            num_classes=num_classes, backbone=backbone, sharing=Sharing(sharing).value, fpn_channels=fpn_channels,
            in_channels=in_channels, global_size=global_size, patch_size=patch_size, overlap=overlap,
            target_ratio=target_ratio, per_component=per_component,
        )
        super().__init__(
            num_classes, backbone, sharing, fpn_channels=fpn_channels, in_channels=in_channels,
            global_size=global_size, patch_size=patch_size, overlap=overlap, pretrained_backbone=pretrained_backbone,
        )
        self.config = config
