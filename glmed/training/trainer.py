"""The training step of a GLNet under a stage's freezing rules (:mod:`glmed.training.stages`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from glmed.models.glnet import GLNet
from glmed.models.losses import GLNetLoss
from glmed.models.placement import model_device
from glmed.models.sharing import collect_local_context
from glmed.training.stages import GLOBAL_PARTS, LISTENING_PART, LOCAL_PARTS, Stage


class GLNetTrainer:
    """Runs training steps of a GLNet under a stage's freezing rules.

    Args:
        model: the network.
        loss: the objective (focal γ=6, weights 1.0, λ=0.15 by default).
        global_lr, local_lr: Adam learning rates of the global parts and of the local
            parts and aggregation head (paper: 1e-4 and 2e-5).
        patches_per_step: in a ``collect_local`` stage, how many of a batch's patches get
            gradients (all others only feed the collect pass); None uses them all.
        collect_batch_size: patches per forward pass of the collect pass.
        after_backward: called after every backward pass, before the optimiser steps; the
            distributed runner averages gradients across processes here (see
            :mod:`glmed.training.distributed`), because the step calls the model's parts
            directly, which ``DistributedDataParallel``'s forward hooks would not see.
    """

    def __init__(
        self,
        model: GLNet,
        loss: GLNetLoss | None = None,
        global_lr: float = 1e-4,
        local_lr: float = 2e-5,
        patches_per_step: int | None = 6,
        collect_batch_size: int = 8,
        after_backward: Callable[[], None] | None = None,
    ) -> None:
        for name, value in (("global_lr", global_lr), ("local_lr", local_lr)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.model = model
        self.loss = loss or GLNetLoss()
        self.global_lr, self.local_lr = global_lr, local_lr
        self.patches_per_step = patches_per_step
        self.collect_batch_size = collect_batch_size
        self.after_backward = after_backward

    def parts(self, names: Iterable[str]) -> list[torch.nn.Module]:
        """The model's modules for ``names`` that this sharing mode has."""
        return [getattr(self.model, name) for name in names if getattr(self.model, name, None) is not None]

    def optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        """Adam over the stage's trainable parts, global parts at ``global_lr``, the rest at ``local_lr``."""
        groups = []
        seen: set = set()
        for names, lr in ((GLOBAL_PARTS + (LISTENING_PART,), self.global_lr), (LOCAL_PARTS, self.local_lr)):
            params = []
            for part in self.parts(n for n in names if n in stage.trainable):
                for parameter in part.parameters():  # global_partner lies inside global_branch: once only
                    if id(parameter) not in seen:
                        seen.add(id(parameter))
                        params.append(parameter)
            if params:
                groups.append({"params": params, "lr": lr})
        if not groups:
            raise ValueError(f"stage {stage.name!r} trains nothing this {self.model.sharing.value!r} model has")
        return torch.optim.Adam(groups, betas=(0.9, 0.999))

    def prepare(self, stage: Stage) -> None:
        """Freeze everything the stage does not train; frozen parts also stop updating BatchNorm."""
        self.model.requires_grad_(False)
        self.model.eval()
        for part in self.parts(stage.trainable):  # a part inside another (global_partner) adds, never removes
            part.requires_grad_(True)
            part.train(True)

    def step(self, stage: Stage, batch: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One optimisation step on a collated batch; returns the loss terms as floats.

        The batch holds ``global_image`` (B×C×g×g), ``global_label`` (B×g×g) and, for
        stages that train local parts, ``patches``, ``patch_labels``, ``boxes_normalized``
        and ``image_index`` (see :func:`glmed.data.samples.collate_global_local`).
        """
        device = model_device(self.model)
        global_image = batch["global_image"].to(device)
        global_label = batch["global_label"].to(device)
        optimizer.zero_grad(set_to_none=True)
        if stage.global_only and not stage.collect_local:
            logits = self.model.global_logits(self.model.global_features(global_image), global_image.shape[-2:])
            terms = {"global": self.loss.weights["global"] * self.loss.focal(logits, global_label)}
            total = terms["global"]
        else:
            patches, boxes = batch["patches"], batch["boxes_normalized"].to(dtype=torch.float32)
            image_index, patch_labels = batch["image_index"], batch["patch_labels"]
            context = None
            if stage.collect_local:  # every patch feeds the collect pass, one device batch at a time
                context = self.collect_local_context(global_image, patches, boxes, image_index)
                chosen = self._choose_patches(len(patches))
                patches, boxes, image_index, patch_labels = (
                    t[chosen] for t in (patches, boxes, image_index, patch_labels)
                )
            patches, boxes, image_index, patch_labels = (
                t.to(device) for t in (patches, boxes, image_index, patch_labels)
            )
            train_global = any(name in stage.trainable for name in GLOBAL_PARTS + (LISTENING_PART,))
            output = self.model(global_image, patches, boxes, image_index, context, train_global=train_global)
            # Without the local branch learning, the local head's and the regulariser's gradients
            # could only reach the global branch through the shared maps: leave them out.
            skip = () if "local_branch" in stage.trainable else ("local", "fmreg")
            result = self.loss(output, patch_labels, global_label, skip=skip)
            terms, total = result.terms, result.total
        total.backward()
        if self.after_backward is not None:
            self.after_backward()
        optimizer.step()
        return {"loss": float(total.detach()), **{name: float(value.detach()) for name, value in terms.items()}}

    @torch.no_grad()
    def collect_local_context(
        self, global_image: torch.Tensor, patches: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Every patch's local maps stitched onto its image's global grid (the L→G input).

        The patches are sent to the device :attr:`collect_batch_size` at a time.
        """
        device = global_image.device
        global_maps = self.model.global_features(global_image)
        chunks = (
            (patches[part].to(device), boxes[part].to(device), image_index[part].to(device))
            for part in (slice(start, start + self.collect_batch_size)
                         for start in range(0, len(patches), self.collect_batch_size))
        )
        return collect_local_context(self.model, global_maps, chunks)

    def _choose_patches(self, count: int) -> torch.Tensor:
        if self.patches_per_step is None or self.patches_per_step >= count:
            return torch.arange(count)
        return torch.randperm(count)[: self.patches_per_step]

    def train_epoch(
        self,
        stage: Stage,
        batches: Iterable[Mapping[str, Any]],
        optimizer: torch.optim.Optimizer,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> dict[str, float]:
        """One pass over ``batches``; returns the mean of each loss term.

        ``on_step(step, terms)`` is called after every step (1-based), e.g. for a progress bar.
        """
        self.prepare(stage)
        sums: dict[str, float] = {}
        count = 0
        for batch in batches:
            terms = self.step(stage, batch, optimizer)
            count += 1
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
            if on_step is not None:
                on_step(count, terms)
        if count == 0:
            raise ValueError(f"stage {stage.name!r}: the training data yielded no batch")
        return {name: total / count for name, total in sums.items()}
