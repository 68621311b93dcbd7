"""GLNet's training objective: focal loss on three outputs plus the feature-map regulariser.

Kept outside the model so that training stages choose what to optimise without the
module knowing. Defaults are the paper's: focal γ=6, main and auxiliary weights 1.0,
regulariser λ=0.15 (the original code used γ=3; it is one argument away).
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
    """

    def __init__(
        self,
        gamma: float = 6.0,
        main_weight: float = 1.0,
        local_weight: float = 1.0,
        global_weight: float = 1.0,
        fmreg_weight: float = 0.15,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.focal = FocalLoss(gamma, ignore_index)
        self.weights = {"main": main_weight, "local": local_weight, "global": global_weight, "fmreg": fmreg_weight}
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
            skip: terms to leave out (``"local"``, ``"global"``, ``"fmreg"``), e.g. those whose
                gradient would only reach frozen parts or, through them, the wrong branch.
        """
        skip = set(skip)
        terms: dict[str, torch.Tensor] = {}
        if output.logits_per_image:
            terms["main"] = self.focal(output.logits, _need(global_labels, "global labels"))
        else:
            patch_labels = _need(patch_labels, "patch labels")
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
        weighted = {name: self.weights[name] * value for name, value in terms.items()}
        # "main" is always there, so the sum starts from a tensor (no ``0 +`` needed).
        total = functools.reduce(operator.add, weighted.values())
        return LossTerms(total=total, terms=weighted)


def _need(value: torch.Tensor | None, what: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"this sharing mode's loss needs {what}")
    return value
