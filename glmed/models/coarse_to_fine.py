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

from dataclasses import dataclass

from glmed.models.glnet import GLNet, GLNetConfig, Sharing, setting


@dataclass(frozen=True)
class CoarseToFineConfig(GLNetConfig):
    """A GLNet's configuration plus the box rule.

    Attributes:
        target_ratio: foreground : background inside the relaxed box (1.0 = 1:1).
        per_component: one box per connected lesion (merged when they overlap) instead of
            one box around all foreground.
        min_component: coarse foreground regions smaller than this are specks, given no box:
            image pixels when at least 1, a fraction of the image's area below 1; 0 keeps all.
        grow_boxes: rounds of box growth after refinement: where the refined mask runs into a
            side of its box that is not the image's border, that side moves out and the grown
            box is refined again (:mod:`glmed.inference.box_growth`); 0 (default) trusts the box.
    """

    target_ratio: float = setting(1.0, "foreground:background wanted inside the relaxed box (paper: 1:1)")
    per_component: bool = setting(False, "one box per connected lesion instead of one around all", flag=True)
    min_component: float = setting(0.0, "coarse regions smaller than this get no box: image pixels (>= 1) or a "
                                        "fraction of the image (< 1); 0 keeps all")
    grow_boxes: int = setting(0, "rounds of growing a box side the refined mask runs into, each re-refining the "
                                 "grown box; 0 trusts the coarse box")

    def model_problems(self) -> list[tuple[str, str]]:
        """The GLNet checks, plus: both branches (the box needs the global one) and a positive ratio."""
        found = super().model_problems()
        if self.sharing in (Sharing.GLOBAL_ONLY.value, Sharing.LOCAL_ONLY.value):
            found.append(("sharing", "coarse-to-fine needs both branches; choose one of none, g2l_shallow, g2l, "
                                     "bidirectional"))
        if not self.target_ratio > 0:
            found.append(("target_ratio", "target_ratio must be positive"))
        if not self.min_component >= 0:
            found.append(("min_component", "min_component must be >= 0 (image pixels, or a fraction of the image "
                                           "below 1)"))
        if int(self.grow_boxes) != self.grow_boxes or self.grow_boxes < 0:
            found.append(("grow_boxes", "grow_boxes must be a whole number of rounds >= 0"))
        return found


class CoarseToFineGLNet(GLNet):
    """A GLNet whose inference refines only the relaxed foreground box.

    Takes every :class:`~glmed.models.glnet.GLNet` argument, plus the box rule of
    :class:`CoarseToFineConfig`:

    Args:
        target_ratio: foreground : background wanted inside the box (paper: 1.0).
        per_component: a box per connected component rather than one around all.
        min_component: the smallest coarse region given a box (pixels, or a fraction below 1).
        grow_boxes: rounds of growing a box whose refined mask runs into its side (0: off).

    Training uses the inherited methods unchanged: the global stage on whole downsampled
    images, the local and bidirectional stages on box crops (see
    :mod:`glmed.data.stage_samples`); :func:`glmed.predict` does the two-stage inference,
    and its box rule can be changed there for one prediction without rebuilding the network.
    """

    config_class = CoarseToFineConfig
