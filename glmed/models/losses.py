"""GLNet's training objective: focal loss on three outputs plus the feature-map regulariser.

Kept outside the model so that training stages choose what to optimise without the
module knowing. Defaults are the paper's: focal γ=6, main and auxiliary weights 1.0,
regulariser λ=0.15 (the original code used γ=3; it is one argument away). :class:`BoundaryLoss`,
an optional training-only term on a band around the label's edges, is not the paper's; nor is
the optional soft Dice term on the main output (MONAI's ``DiceLoss``, ``dice_weight``).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glmed.models.glnet import GLNetOutput


class FocalLoss(nn.Module):
    """Multi-class focal loss, ``-(1 - p_t)^γ · log p_t``, averaged over labelled pixels.

    With ``gamma=0`` it is exactly the cross-entropy. Pixels equal to ``ignore_index``
    count neither in the sum nor in the mean.

    Args:
        gamma: focusing parameter (paper: 6).
        ignore_index: label value to skip, or None.
    """

    def __init__(self, gamma: float = 6.0, ignore_index: int | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal loss gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``N×K×H×W`` logits and ``N×H×W`` integer class map → scalar loss."""
        if target.dtype.is_floating_point or target.dtype == torch.bool:
            raise ValueError(f"focal loss needs an integer class-index target, got dtype {target.dtype}")
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        target = target.long()
        valid = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        num_classes = logits.shape[1]
        if bool(((safe_target < 0) | (safe_target >= num_classes)).any()):
            found = torch.unique(target[valid]).tolist()
            raise ValueError(f"target values {found[:10]} are not class indices in [0, {num_classes})")
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, safe_target[:, None])[:, 0]
        # The floor keeps the gradient of x**gamma finite at x = 0 when gamma < 1.
        loss = -((1.0 - log_p.exp()).clamp(min=1e-12) ** self.gamma) * log_p
        loss = loss[valid]
        return loss.mean() if loss.numel() else logits.sum() * 0.0


def boundary_band(target: torch.Tensor, width: int, ignore_index: int | None = None) -> torch.Tensor:
    """Pixels within ``width`` pixels of an edge between two classes of a label map.

    A pixel is in the band when the ``(2·width+1)²`` square around it holds a labelled pixel of
    another class: for each class this is its mask dilated minus its mask eroded by that square,
    and the union over the classes is one max-pool and one min-pool of the labels compared, so
    the cost does not grow with the number of classes. The band reaches ``width`` pixels into
    each side of an edge (``2·width`` across). The image's border is no edge (the pooling pads
    with nothing), and ``ignore_index`` pixels are neither in the band nor make one: an edge
    with unlabelled ground is not a known edge. Runs on the label's device, with no copy to the
    host, and keeps no gradient (labels have none).

    Args:
        target: ``N×H×W`` integer class map (any integer dtype).
        width: band half-width in pixels of ``target`` (>= 1).
        ignore_index: label value of unlabelled pixels, or None.

    Returns:
        ``N×H×W`` boolean tensor on ``target``'s device.
    """
    _check_width(width)
    if target.dim() != 3 or target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"boundary band needs an N×H×W integer class map, got shape {tuple(target.shape)} "
                         f"dtype {target.dtype}")
    with torch.no_grad():
        values = target.float()[:, None]  # exact for class indices below 2**24
        valid = torch.ones_like(values, dtype=torch.bool) if ignore_index is None else values != ignore_index
        highest = _square_max(values.masked_fill(~valid, -torch.inf), width)
        lowest = -_square_max((-values).masked_fill(~valid, -torch.inf), width)
        return (valid & (highest > lowest))[:, 0]


def _check_width(width: int) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"boundary band width must be an integer >= 1 (pixels), got {width!r}")


def _square_max(values: torch.Tensor, width: int) -> torch.Tensor:
    """Max over the ``(2·width+1)²`` square around each pixel, as a row pass then a column pass."""
    size = 2 * width + 1
    rows = F.max_pool2d(values, (1, size), stride=1, padding=(0, width))
    return F.max_pool2d(rows, (size, 1), stride=1, padding=(width, 0))


_OFF_BAND = -1
"""The label :class:`BoundaryLoss` gives pixels off the band (class indices are >= 0)."""


class BoundaryLoss(nn.Module):
    """Focal (or, with ``gamma=0``, cross-entropy) loss on the band around the label's edges only.

    An auxiliary training term that asks the segmentation output to get the pixels next to
    class edges right, where a lesion's irregular border is, and where the downsampled global
    view and the focal loss's averaging over mostly easy pixels put least weight. Added to the
    main loss with a weight, it up-weights the band's pixels by that weight; it costs nothing at
    inference, since it adds no layer and only reads the labels.

    Where the idea comes from: weighting the pixels near object borders goes back to U-Net's
    border weight maps; in ultra-high-resolution segmentation, later work than GLNet trained an
    extra boundary head on the label's boundary band and reported about one mIoU point more at no
    inference cost (see ``REFERENCES.md``). This version needs no extra head: it restricts the
    segmentation loss itself to a band found from the labels by max-pooling (see
    :func:`boundary_band`), on the label's own device.

    The loss is the mean over the batch's band pixels; a batch without any edge (one class
    only, or all ignored) gives a zero that still belongs to the graph, so ``backward`` and
    DistributedDataParallel see the same parameters every step.

    Args:
        width: band half-width in pixels of the label map it is given (patch labels are
            full-resolution pixels, the global view's labels downsampled ones).
        gamma: focal γ on the band (0, the default: cross-entropy, which keeps sharpening band
            pixels that a focal loss already counts as easy).
        ignore_index: label value to skip, or None.
    """

    def __init__(self, width: int = 3, gamma: float = 0.0, ignore_index: int | None = None) -> None:
        super().__init__()
        _check_width(width)
        self.width, self.ignore_index = width, ignore_index
        # Pixels off the band (ignored ones included) get a label no class takes, so the focal
        # loss's own masking leaves them out, and still checks the band's labels.
        self.focal = FocalLoss(gamma, ignore_index=_OFF_BAND)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``N×K×H×W`` logits and ``N×H×W`` integer class map → scalar loss (float32)."""
        band = boundary_band(target, self.width, self.ignore_index)
        return self.focal(logits, torch.where(band, target.long(), _OFF_BAND))


@dataclass
class LossTerms:
    """The total loss and each weighted term, for logging."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


class GLNetLoss(nn.Module):
    """Focal loss on the main, local and global outputs plus λ‖X_loc − X_glb‖².

    The regulariser compares the local branch's last map with the global branch's last
    map cropped at the patch; the global side is detached, so the regulariser pulls the
    local branch towards the global one and never the reverse. (Under global→local
    sharing the local branch also consumed global maps; the paper's local stage runs the
    global branch frozen — ``GLNet.forward(..., train_global=False)`` — so nothing reaches
    it that way either.) Terms whose output a sharing mode lacks are left out.

    Args:
        gamma: focal loss γ.
        main_weight, local_weight, global_weight: weights of the three focal terms.
        fmreg_weight: λ of the feature-map regulariser.
        ignore_index: label value to skip.
        boundary_weight: weight of :class:`BoundaryLoss` on the main output (0, the default and
            the paper's, leaves it out; training only, it costs nothing at inference).
        boundary_width: its band half-width, in pixels of the labels the main output is scored
            on (full-resolution patch pixels; downsampled pixels in a global-only step).
        dice_weight: weight of a soft Dice term on the main output (MONAI's ``DiceLoss`` on the
            softmax, over the whole batch at once, without the background class for two-class
            models; 0, the default and the paper's, leaves it out). In the global stage the main
            output is the global branch's, so the term trains the coarse mask coarse-to-fine
            draws its boxes from. Why: focal loss at γ=6 all but ignores pixels the network
            already gets roughly right (its terms are 0.01–0.03 against cross-entropy's 0.7
            at the start), where Dice scores the lesion's overlap as a whole, as the ISIC metric
            does; MONAI's own peers train with Dice plus cross-entropy (docs/benchmarks.md).
    """

    def __init__(
        self,
        gamma: float = 6.0,
        main_weight: float = 1.0,
        local_weight: float = 1.0,
        global_weight: float = 1.0,
        fmreg_weight: float = 0.15,
        ignore_index: int | None = None,
        boundary_weight: float = 0.0,
        boundary_width: int = 3,
        dice_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.focal = FocalLoss(gamma, ignore_index)
        self.boundary = BoundaryLoss(boundary_width, ignore_index=ignore_index)
        self.ignore_index = ignore_index
        self.weights = {"main": main_weight, "local": local_weight, "global": global_weight, "fmreg": fmreg_weight,
                        "boundary": boundary_weight, "dice": dice_weight}
        for name, value in self.weights.items():
            if value < 0:
                raise ValueError(f"loss weight {name!r} must be >= 0, got {value}")

    def forward(
        self,
        output: GLNetOutput,
        patch_labels: torch.Tensor | None,
        global_labels: torch.Tensor | None,
        skip: Iterable[str] = (),
    ) -> LossTerms:
        """Weighted sum of the terms available for this output.

        Args:
            output: what :meth:`glmed.models.glnet.GLNet.forward` returned.
            patch_labels: ``N×p×p`` class maps of the patches (None for ``global_only``).
            global_labels: ``B×g×g`` class maps of the downsampled images (nearest-resampled).
            skip: terms to leave out (``"local"``, ``"global"``, ``"fmreg"``, ``"boundary"``, ``"dice"``), e.g.
                those whose gradient would only reach frozen parts or, through them, the wrong branch.
        """
        skip = set(skip)
        terms: dict[str, torch.Tensor] = {}
        if output.logits_per_image:
            main_labels = _need(global_labels, "global labels")
            terms["main"] = self.focal(output.logits, main_labels)
        else:
            patch_labels = main_labels = _need(patch_labels, "patch labels")
            terms["main"] = self.focal(output.logits, patch_labels)
            if output.global_logits is not None:
                if "local" not in skip:
                    terms["local"] = self.focal(output.local_logits, patch_labels)
                if "global" not in skip:
                    terms["global"] = self.focal(output.global_logits, _need(global_labels, "global labels"))
                if "fmreg" not in skip:
                    local_final = _need(output.local_final, "the local branch's final map")
                    global_crop = _need(output.global_final_crop, "the global branch's cropped final map")
                    terms["fmreg"] = F.mse_loss(local_final, global_crop.detach())
        terms.update(self._main_extras(output.logits, main_labels, skip))
        return self._weighted(terms)

    def global_only(self, logits: torch.Tensor, labels: torch.Tensor) -> LossTerms:
        """The loss of a global-only step (the paper's global stage): the global branch's logits are the main output.

        Its focal term is weighted as ``"global"`` (the branch it trains); the boundary and Dice
        terms, which belong to the main output, apply to these logits, so the global stage
        trains the coarse mask coarse-to-fine draws its boxes from with them.

        Args:
            logits: ``B×K×g×g`` the global branch's logits.
            labels: ``B×g×g`` the downsampled images' class maps.
        """
        terms = {"global": self.focal(logits, labels), **self._main_extras(logits, labels, ())}
        return self._weighted(terms)

    def _main_extras(self, logits: torch.Tensor, labels: torch.Tensor, skip: Iterable[str]) -> dict[str, torch.Tensor]:
        """The optional terms on the main output (boundary, Dice), unweighted; those of weight 0 left out."""
        extras: dict[str, torch.Tensor] = {}
        if self.weights["boundary"] > 0 and "boundary" not in skip:
            extras["boundary"] = self.boundary(logits, labels)
        if self.weights["dice"] > 0 and "dice" not in skip:
            extras["dice"] = self.dice(logits, labels)
        return extras

    def _weighted(self, terms: dict[str, torch.Tensor]) -> LossTerms:
        """Each term times its weight, and their sum (``terms`` is never empty: a focal term is always there)."""
        weighted = {name: self.weights[name] * value for name, value in terms.items()}
        total = functools.reduce(operator.add, weighted.values())
        return LossTerms(total=total, terms=weighted)

    def dice(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """MONAI's soft Dice loss of ``N×K×H×W`` logits against ``N×H×W`` class maps, over the batch at once (float32).

        Two-class models leave the background out (the lesion's overlap is what counts); with
        more classes, class 0 is a class like the others (DeepGlobe's urban land) and counts.
        Over the batch at once, so a patch of plain skin (no lesion at all) does not make a
        term of its own that only an empty prediction satisfies.
        """
        loss = _dice_loss(include_background=logits.shape[1] != 2, ignore_index=self.ignore_index)
        return loss(logits.float(), labels[:, None].long())


@functools.cache
def _dice_loss(include_background: bool, ignore_index: int | None) -> nn.Module:
    """MONAI's soft Dice loss as :meth:`GLNetLoss.dice` uses it, built once per setting (MONAI loads on first use)."""
    from monai.losses import DiceLoss

    return DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True, batch=True,
                    ignore_index=ignore_index)


def _need(value: torch.Tensor | None, what: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"this sharing mode's loss needs {what}")
    return value
