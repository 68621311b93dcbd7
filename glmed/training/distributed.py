"""Training on several processes (``torchrun``): one process per device, ``DistributedDataParallel``.

Launched under ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), :func:`init_distributed` joins the process group —
NCCL when the process drives a GPU, gloo on the CPU — and every process then:

- trains on its own share of each epoch's image order (a ``DistributedSampler`` in
  :func:`glmed.training.loader.epoch_loader`), the order itself being the same in every
  process and each image's sample seeded by its place in it, not by the process;
- runs each step through ``torch.nn.parallel.DistributedDataParallel``: the trainer wraps
  one stage's forward pass and loss (:class:`~glmed.training.trainer.StageStep`) in it when
  the stage starts, so every process starts the stage from rank 0's parameters and buffers,
  the gradients are averaged across processes during the backward pass, and each forward
  pass first takes rank 0's BatchNorm statistics. Only stages where some trainable parameter
  gets no gradient pay for DDP's search for unused parameters
  (:func:`~glmed.training.trainer.needs_unused_parameter_search`); bidirectional sharing's
  collect pass runs outside the wrapped forward, without gradients;
- ends each epoch with rank 0's BatchNorm statistics (:meth:`Distributed.broadcast_buffers`),
  so validation and checkpoints see the same model in every process.

Only rank 0 writes files; :data:`SINGLE` stands for a run without ``torchrun``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run.

    Attributes:
        rank: this process's index, 0 to ``world_size - 1``; rank 0 writes the outputs.
        world_size: number of processes.
        local_rank: index on this machine (which GPU to use).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True for the process that writes files and prints."""
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """The device this process trains on: ``requested``, ``auto`` picking CUDA when present.

        Each process of a multi-GPU run gets its own GPU (``cuda:LOCAL_RANK``).
        """
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(requested)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank if self.enabled else torch.cuda.current_device())
        return device

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Give every process rank 0's buffers (BatchNorm statistics)."""
        if self.enabled:
            with torch.no_grad():
                for buffer in module.buffers():
                    dist.broadcast(buffer, src=0)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over processes (e.g. an epoch's mean losses)."""
        if not self.enabled or not values:
            return dict(values)
        names = sorted(values)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        tensor = torch.tensor([values[name] for name in names], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return {name: float(value) / self.world_size for name, value in zip(names, tensor.tolist(), strict=True)}

    def gather(self, item: Any) -> list[Any]:
        """Every process's ``item`` (any picklable value), in rank order, on every process."""
        if not self.enabled:
            return [item]
        items: list[Any] = [None] * self.world_size
        dist.all_gather_object(items, item)
        return items

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.enabled:
            dist.barrier()


SINGLE = Distributed()
"""A run in one process."""


def init_distributed(requested_device: str = "auto") -> Distributed:
    """Join ``torchrun``'s process group if launched by it; otherwise :data:`SINGLE`.

    The backend is NCCL when the process will train on a GPU, gloo otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    context = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    device = context.device(requested_device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return context


def close_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

