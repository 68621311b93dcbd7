"""The training step of a GLNet under a stage's freezing rules (:mod:`glmed.training.stages`).

A step's forward pass and loss are one module, :class:`StageStep`, so that under
``torchrun`` :class:`~torch.nn.parallel.DistributedDataParallel` can wrap it: DDP
synchronises through the wrapped module's ``forward``, and the stages call different parts
of the model (the global branch alone, or both branches with the loss terms a stage keeps).
The trainer also runs the steps in mixed precision (``amp``) and in channels-last memory
format when asked.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from glmed.models.glnet import GLNet, GLNetOutput, spatial_size
from glmed.models.losses import GLNetLoss
from glmed.models.placement import model_device
from glmed.models.sharing import collect_local_context
from glmed.training.distributed import SINGLE, Distributed
from glmed.training.stages import GLOBAL_PARTS, LISTENING_PART, LOCAL_PARTS, Stage

AMP_MODES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Mixed-precision modes: the type ``torch.autocast`` computes in (None: float32 throughout)."""


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``amp`` on ``device`` (a no-op for ``"off"``).

    Raises:
        ValueError: for an unknown mode, or ``fp16`` off CUDA: float16's narrow range needs
            the gradient scaling this trainer does with CUDA's scaler, and CPUs have few fast
            float16 kernels; bfloat16 has float32's range and needs no scaler.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"unknown amp mode {amp!r}; choose one of {sorted(AMP_MODES)}")
    dtype = AMP_MODES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError(f"amp 'fp16' needs a CUDA GPU (the model is on {device}); use amp='bf16' on the CPU")
    return torch.autocast(device.type, dtype=dtype)


def needs_unused_parameter_search(model: GLNet, stage: Stage) -> bool:
    """Whether some parameter ``stage`` trains gets no gradient from its step, whatever the batch.

    ``DistributedDataParallel`` then needs ``find_unused_parameters=True`` (it otherwise
    waits for those gradients forever and fails at the next step); elsewhere the search of
    the autograd graph it costs every step is left out. Two cases, both found by training
    every sharing mode's stages (``tests/training/test_ddp.py`` checks this rule against
    the gradients a step actually leaves):

    - the global branch's local→global convolutions (``bidirectional``) are trainable but
      the stage has no collect pass (``collect_local`` False), so they get no local context:
      the paper's global stage of a bidirectional model, which trains the whole global branch;
    - the local head is trainable, the local branch is not and the model has both branches:
      the step then leaves out the ``local`` term, the head's only loss.

    Parameters no process uses keep no gradient under DDP either, so the optimiser skips
    them as in a single process.
    """
    trainable = set(stage.trainable)
    listening = model.global_partner is not None and bool(trainable & {"global_branch", LISTENING_PART})
    deaf_head = (model.local_head is not None and model.global_branch is not None
                 and "local_head" in trainable and "local_branch" not in trainable)
    return (listening and not stage.collect_local) or deaf_head


class StageStep(nn.Module):
    """One stage's forward pass and loss as a module: what DDP wraps.

    ``forward`` returns the total loss (float32) and its weighted terms. The collect pass of
    bidirectional sharing stays outside (see :meth:`GLNetTrainer.collect_local_context`):
    it needs no gradient, and it sends a batch's patches to the device a few at a time,
    while DDP would move all inputs of ``forward`` at once.

    Args:
        model: the network, its stage's parts already (un)frozen.
        loss: the objective.
        stage: the stage whose rules the step follows.
        amp: mixed-precision mode (see :data:`AMP_MODES`); the loss is always computed
            in float32 on float32 copies of the outputs.
    """

    def __init__(self, model: GLNet, loss: GLNetLoss, stage: Stage, amp: str = "off") -> None:
        super().__init__()
        self.model, self.loss, self.amp = model, loss, amp
        self.global_only = stage.global_only and not stage.collect_local
        self.train_global = any(name in stage.trainable for name in GLOBAL_PARTS + (LISTENING_PART,))
        # Without the local branch learning, the local head's and the regulariser's gradients
        # could only reach the global branch through the shared maps: leave them out.
        self.skip = () if "local_branch" in stage.trainable else ("local", "fmreg")

    def forward(
        self,
        global_image: torch.Tensor,
        global_label: torch.Tensor,
        patches: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        patch_labels: torch.Tensor | None = None,
        local_context: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stage's loss on one batch, all tensors on the model's device.

        Args:
            global_image: ``B×C×g×g`` downsampled images.
            global_label: ``B×g×g`` their class maps.
            patches: ``N×C×p×p`` the patches that get gradients (unused by a global-only step,
                as are the next three).
            boxes: ``N×4`` their boxes as fractions of their image.
            image_index: ``N`` their image's index in the batch.
            patch_labels: ``N×p×p`` their class maps.
            local_context: stitched local maps from the collect pass, or None.

        Returns:
            The total loss and each weighted term, float32 scalars.
        """
        with autocast(self.amp, global_image.device):
            if self.global_only:
                logits = self.model.global_logits(self.model.global_features(global_image), spatial_size(global_image))
            else:
                output = self.model(global_image, patches, boxes, image_index, local_context,
                                    train_global=self.train_global)
        with torch.autocast(global_image.device.type, enabled=False):
            if self.global_only:
                result = self.loss.global_only(logits.float(), global_label)
            else:
                result = self.loss(_float32(output), patch_labels, global_label, skip=self.skip)
            return result.total, result.terms


LISTENING_LR_FACTOR = 0.1
"""``listening_lr`` as a fraction of ``global_lr`` by default. The bidirectional stage adds the
local→global convolutions to a trained model, zero-initialised (:mod:`glmed.training.warm_start`);
at the global branch's own rate their first Adam steps, about ``lr`` per weight over hundreds of
inputs, shifted the global maps the frozen local branch listens to so far that one epoch lowered
a G→L model's mean Jaccard (0.606 to 0.569 at 1e-3, the ISIC demo's global rate), where a tenth
of it raised it (0.786 at 1e-4; generated 1024×1536 hard dermoscopy images, one seed, 2026-11-30)."""


class GLNetTrainer:
    """Runs training steps of a GLNet under a stage's freezing rules.

    Args:
        model: the network, on its device (converted in place to channels-last with
            ``channels_last``).
        loss: the objective (focal γ=6, weights 1.0, λ=0.15 by default).
        global_lr, local_lr: Adam learning rates of the global parts and of the local
            parts and aggregation head (paper: 1e-4 and 2e-5).
        patches_per_step: in a ``collect_local`` stage, how many of a batch's patches get
            gradients (all others only feed the collect pass); None uses them all.
        collect_batch_size: patches per forward pass of the collect pass.
        distributed: this process's place in a ``torchrun`` run; when several processes
            train, each stage's :class:`StageStep` is wrapped in ``DistributedDataParallel``,
            which averages the gradients and gives every process rank 0's BatchNorm statistics.
        amp: ``"off"`` (float32), ``"bf16"`` (autocast to bfloat16, CPU or CUDA) or ``"fp16"``
            (autocast to float16 with a gradient scaler, CUDA only).
        channels_last: keep the model's weights and the image batches in channels-last
            memory format (faster convolutions on recent GPUs, above all with ``amp``).
        listening_lr: Adam learning rate of the local→global convolutions when a stage names
            them (``"global_partner"``, the bidirectional stage); ``global_lr / 10`` by default
            (:data:`LISTENING_LR_FACTOR`).

    Raises:
        ValueError: a non-positive learning rate, an unknown ``amp`` mode, or ``fp16`` on a
            model that is not on a CUDA device.
    """

    def __init__(
        self,
        model: GLNet,
        loss: GLNetLoss | None = None,
        global_lr: float = 1e-4,
        local_lr: float = 2e-5,
        patches_per_step: int | None = 6,
        collect_batch_size: int = 8,
        distributed: Distributed = SINGLE,
        amp: str = "off",
        channels_last: bool = False,
        listening_lr: float | None = None,
    ) -> None:
        listening_lr = global_lr * LISTENING_LR_FACTOR if listening_lr is None else listening_lr
        for name, value in (("global_lr", global_lr), ("local_lr", local_lr), ("listening_lr", listening_lr)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        autocast(amp, model_device(model))  # refuses an unknown mode, or fp16 off CUDA, now
        self.model = model
        self.loss = loss or GLNetLoss()
        self.global_lr, self.local_lr, self.listening_lr = global_lr, local_lr, listening_lr
        self.patches_per_step = patches_per_step
        self.collect_batch_size = collect_batch_size
        self.distributed, self.amp, self.channels_last = distributed, amp, channels_last
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        if channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing from the stubs
        self._step_module: nn.Module | None = None
        self._step_stage: Stage | None = None

    def parts(self, names: Iterable[str]) -> list[torch.nn.Module]:
        """The model's modules for ``names`` that this sharing mode has."""
        return [getattr(self.model, name) for name in names if getattr(self.model, name, None) is not None]

    def optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        """Adam over the stage's trainable parts, each part at its rate.

        Global parts at ``global_lr``, the local→global convolutions, when the stage names them,
        at ``listening_lr``, the rest at ``local_lr``.
        """
        groups = []
        seen: set = set()
        rates = (((LISTENING_PART,), self.listening_lr), (GLOBAL_PARTS, self.global_lr), (LOCAL_PARTS, self.local_lr))
        for names, lr in rates:
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
        """Freeze everything the stage does not train and build the stage's step module.

        Frozen parts also stop updating BatchNorm. Under ``torchrun`` the step module is
        wrapped in ``DistributedDataParallel`` once per stage (its trainable parameters are
        fixed at construction); building it gives every process rank 0's parameters and
        buffers, so every process must prepare the same stage together.
        """
        self.model.requires_grad_(False)
        self.model.eval()
        for part in self.parts(stage.trainable):  # a part inside another (global_partner) adds, never removes
            part.requires_grad_(True)
            part.train(True)
        if self._step_stage != stage or self._step_module is None:
            self._step_module = None  # the previous wrapper's gradient hooks go with it
            self._step_module = self._wrap(StageStep(self.model, self.loss, stage, self.amp), stage)
            self._step_stage = stage

    def _wrap(self, module: StageStep, stage: Stage) -> nn.Module:
        if not self.distributed.enabled:
            return module
        device = model_device(self.model)
        # DDP's default buffer handling shares rank 0's buffers before every forward pass
        # (``broadcast_buffers``, renamed ``forward_sync_buffers`` in torch 2.13).
        return DistributedDataParallel(
            module, device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=needs_unused_parameter_search(self.model, stage),
        )

    def losses(self, stage: Stage, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stage's total loss and weighted terms on a collated batch, ready for ``backward``.

        The batch holds ``global_image`` (B×C×g×g), ``global_label`` (B×g×g) and, for
        stages that train local parts, ``patches``, ``patch_labels``, ``boxes_normalized``
        and ``image_index`` (see :func:`glmed.data.samples.collate_global_local`). Prepares
        the stage first if it is not the prepared one.
        """
        if self._step_stage != stage or self._step_module is None:
            self.prepare(stage)
        assert self._step_module is not None  # prepare built it
        device = model_device(self.model)
        global_image = self._to_device(batch["global_image"], device)
        global_label = batch["global_label"].to(device)
        if stage.global_only and not stage.collect_local:
            return self._step_module(global_image, global_label)
        patches, boxes = batch["patches"], batch["boxes_normalized"].to(dtype=torch.float32)
        image_index, patch_labels = batch["image_index"], batch["patch_labels"]
        context = None
        if stage.collect_local:  # every patch feeds the collect pass, one device batch at a time
            context = self.collect_local_context(global_image, patches, boxes, image_index)
            chosen = self._choose_patches(len(patches))
            patches, boxes, image_index, patch_labels = (t[chosen] for t in (patches, boxes, image_index, patch_labels))
        return self._step_module(global_image, global_label, self._to_device(patches, device), boxes.to(device),
                                 image_index.to(device), patch_labels.to(device), context)

    def step(self, stage: Stage, batch: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One optimisation step on a collated batch (see :meth:`losses`); returns the loss terms as floats."""
        optimizer.zero_grad(set_to_none=True)
        total, terms = self.losses(stage, batch)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            total.backward()
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
        with autocast(self.amp, device):
            global_maps = self.model.global_features(self._to_device(global_image, device))
            return collect_local_context(self.model, global_maps, self._chunks(patches, boxes, image_index, device))

    def _chunks(self, patches: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor,
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for start in range(0, len(patches), self.collect_batch_size):
            part = slice(start, start + self.collect_batch_size)
            yield self._to_device(patches[part], device), boxes[part], image_index[part]  # read on the host

    def _to_device(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """An image batch on ``device``, channels-last when the trainer keeps the model so."""
        if self.channels_last:
            return images.to(device, memory_format=torch.channels_last)
        return images.to(device)

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
        Under ``torchrun`` every process ends the epoch with rank 0's BatchNorm statistics
        (DDP shares them before each forward pass, so the last step's would otherwise
        differ), so that validation and checkpoints see the same model everywhere.
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
        self.distributed.broadcast_buffers(self.model)
        if count == 0:
            raise ValueError(f"stage {stage.name!r}: the training data yielded no batch")
        return {name: total / count for name, total in sums.items()}


def _float32(output: GLNetOutput) -> GLNetOutput:
    """``output`` with every map in float32 (the loss's type under mixed precision)."""
    return dataclasses.replace(output, **{
        item.name: value.float() for item in dataclasses.fields(output)
        if isinstance(value := getattr(output, item.name), torch.Tensor)
    })
