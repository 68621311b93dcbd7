"""Staged GLNet training: each stage says which parts learn, and the step follows it.

The paper trains in stages: the global branch alone; then the local branch (with the
aggregation head and the feature-map regulariser) while the global branch stays fixed;
then, for bidirectional sharing, the global branch again while the local branch stays
fixed and feeds it every patch's features. A :class:`Stage` is plain data describing one
of these, so a schedule is a list and can be saved, printed or changed without code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

import torch

from glmed.engine.devices import model_device
from glmed.models.glnet import GLNet, Sharing
from glmed.models.losses import GLNetLoss
from glmed.models.sharing import LocalToGlobalCanvas

GLOBAL_PARTS = ("global_branch", "global_head")
"""The global branch and its head: what the global stage trains."""
LOCAL_PARTS = ("local_branch", "local_head", "aggregate")
"""The local branch, its head and the aggregation head: what the local stage trains."""
LISTENING_PART = "global_partner"
"""The global branch's local→global convolutions alone (see :attr:`GLNet.global_partner`)."""
PARTS = GLOBAL_PARTS + (LISTENING_PART,) + LOCAL_PARTS


@dataclass(frozen=True)
class Stage:
    """One training stage.

    Attributes:
        name: shown in logs and checkpoints.
        trainable: the model parts that learn (from :data:`PARTS`); all others are frozen.
        epochs: passes over the training data.
        collect_local: stitch every patch's local features onto the global grid before
            the global pass (bidirectional sharing); needs samples carrying all their patches.
    """

    name: str
    trainable: Tuple[str, ...]
    epochs: int = 1
    collect_local: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.trainable) - set(PARTS)
        if unknown or not self.trainable:
            raise ValueError(f"stage {self.name!r}: trainable parts must be a non-empty subset of {PARTS}, "
                             f"got {tuple(self.trainable)}")
        if self.epochs < 0:
            raise ValueError(f"stage {self.name!r}: epochs must be >= 0, got {self.epochs}")

    @property
    def global_only(self) -> bool:
        """True when only global parts learn: the step then runs the global branch alone."""
        return set(self.trainable) <= set(GLOBAL_PARTS)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def paper_stages(sharing: str | Sharing, epochs: Sequence[int] = (1, 1, 1)) -> List[Stage]:
    """The paper's schedule for a sharing mode: global, then local, then bidirectional.

    ``epochs`` gives each stage's epochs in that order; stages a mode lacks are skipped.
    The bidirectional stage trains the global branch's local→global convolutions and the
    aggregation head, everything else fixed. The global branch without local context —
    the collect pass, and coarse-to-fine's coarse pass — then stays exactly the global
    stage's, as the original code's frozen copy of the global branch kept it, without the
    copy; training the whole global branch here instead drifts it towards views with local
    context and spoils those passes (measured: coarse-to-fine G⇄L fell below G→L).
    """
    mode = Sharing(sharing)
    global_epochs, local_epochs, both_epochs = (list(epochs) + [1, 1, 1])[:3]
    if mode is Sharing.GLOBAL_ONLY:
        return [Stage("global", GLOBAL_PARTS, global_epochs)]
    if mode is Sharing.LOCAL_ONLY:
        return [Stage("local", ("local_branch", "local_head"), local_epochs)]
    stages = [Stage("global", GLOBAL_PARTS, global_epochs), Stage("local", LOCAL_PARTS, local_epochs)]
    if mode is Sharing.BIDIRECTIONAL:
        stages.append(Stage("bidirectional", (LISTENING_PART, "aggregate"), both_epochs, collect_local=True))
    return stages


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
            :mod:`glmed.engine.distributed`), because the step calls the model's parts
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

    def parts(self, names: Iterable[str]) -> List[torch.nn.Module]:
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

    def step(self, stage: Stage, batch: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> Dict[str, float]:
        """One optimisation step on a collated batch; returns the loss terms as floats.

        The batch holds ``global_image`` (B×C×g×g), ``global_label`` (B×g×g) and, for
        stages that train local parts, ``patches``, ``patch_labels``, ``boxes_normalized``
        and ``image_index`` (see :func:`glmed.data.sampler.collate_global_local`).
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
    ) -> Dict[str, torch.Tensor]:
        """Every patch's local maps stitched onto its image's global grid (the L→G input)."""
        model = self.model
        device = global_image.device
        global_maps = model.global_features(global_image)
        canvas = LocalToGlobalCanvas.like(global_maps, model.sharing.local_to_global_points)
        for start in range(0, len(patches), self.collect_batch_size):
            part = slice(start, start + self.collect_batch_size)
            chunk_boxes, chunk_index = boxes[part].to(device), image_index[part].to(device)
            local_maps = model.local_features(patches[part].to(device), global_maps, chunk_boxes, chunk_index)
            canvas.add(local_maps, chunk_boxes, chunk_index)
        return canvas.maps()

    def _choose_patches(self, count: int) -> torch.Tensor:
        if self.patches_per_step is None or self.patches_per_step >= count:
            return torch.arange(count)
        return torch.randperm(count)[: self.patches_per_step]

    def train_epoch(
        self,
        stage: Stage,
        batches: Iterable[Mapping[str, Any]],
        optimizer: torch.optim.Optimizer,
        on_step: Callable[[int, Dict[str, float]], None] | None = None,
    ) -> Dict[str, float]:
        """One pass over ``batches``; returns the mean of each loss term.

        ``on_step(step, terms)`` is called after every step (1-based), e.g. for a progress bar.
        """
        self.prepare(stage)
        sums: Dict[str, float] = {}
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
