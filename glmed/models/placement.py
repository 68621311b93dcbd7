"""Where and in which floating-point type a model computes.

The engine follows the model instead of assuming CUDA and float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The type of the model's first floating-point parameter (float32 when it has none)."""
    floating = (p.dtype for p in model.parameters() if p.dtype.is_floating_point)
    return next(floating, torch.float32)


@dataclass(frozen=True)
class Placement:
    """A device and floating-point type to send a model's inputs to (e.g. CUDA, bfloat16)."""

    device: torch.device
    dtype: torch.dtype

    @classmethod
    def of(cls, model: torch.nn.Module, device: torch.device | None = None) -> Placement:
        """The model's placement, or ``device`` with the model's type when one is named."""
        return cls(device or model_device(model), model_dtype(model))

    def put(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on this device, in this type."""
        return tensor.to(device=self.device, dtype=self.dtype)
