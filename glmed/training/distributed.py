"""Training on several processes (``torchrun``): one process per device, gradients averaged.

Launched under ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), :func:`init_distributed` joins the process group —
NCCL when the process drives a GPU, gloo on the CPU — and every process then:

- starts from rank 0's parameters and buffers (:meth:`Distributed.broadcast_module`);
- trains on its own shard of each epoch's image order (:meth:`Distributed.shard`), the
  order itself being the same in every process;
- after every backward pass averages the gradients of all trainable parameters across
  processes (:meth:`Distributed.gradient_hook`, given to
  :class:`~glmed.training.trainer.GLNetTrainer` as ``after_backward``) and takes rank 0's
  BatchNorm statistics, so every process takes the same optimiser step and holds the same
  weights.

That is what ``DistributedDataParallel`` does (averaged gradients, rank 0's buffers). DDP
itself is not used because it synchronises through the wrapped module's ``forward``, and
the training step calls the model's parts directly (``model.global_features(...)`` in the
global stage), which DDP would not see.

Only rank 0 writes files; :data:`SINGLE` stands for a run without ``torchrun``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
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

    def shard(self, order: Sequence[int]) -> list[int]:
        """This process's part of ``order``: every ``world_size``-th item from ``rank``.

        The order is first padded by repeating its beginning to a multiple of the world
        size (as ``torch.utils.data.DistributedSampler`` does), so every process takes
        the same number of steps and no collective call waits forever.
        """
        order = list(order)
        if not self.enabled or not order:
            return order
        padded = order + order[: (-len(order)) % self.world_size]
        while len(padded) % self.world_size:  # fewer items than processes
            padded += order[: self.world_size - len(padded) % self.world_size]
        return padded[self.rank :: self.world_size]

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Give every process rank 0's parameters and buffers."""
        if self.enabled:
            with torch.no_grad():
                for tensor in list(module.parameters()) + list(module.buffers()):
                    dist.broadcast(tensor.data, src=0)

    def gradient_hook(self, module: torch.nn.Module) -> Callable[[], None] | None:
        """A function to call after each backward pass: averages gradients, shares rank 0's buffers.

        A parameter that some process's batch gave a gradient takes part, with a zero
        gradient where another's gave it none (as DDP does), so all processes make the same
        collective calls; one that no process used keeps no gradient, so the optimiser skips
        it as in a single process. Returns None for a single process.
        """
        if not self.enabled:
            return None

        def average() -> None:
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
                dist.all_reduce(used, op=dist.ReduceOp.MAX)
                # A parameter no process used stays None.
                params = [p for p, flag in zip(params, used.tolist(), strict=True) if flag]
            if params:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                flat = torch.cat([g.reshape(-1) for g in grads])
                dist.all_reduce(flat)
                flat /= self.world_size
                offset = 0
                for p in params:
                    p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
                    offset += p.numel()
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

        return average

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

