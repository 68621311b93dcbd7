"""Where a model lives, so the engine follows the model instead of assuming CUDA."""

from __future__ import annotations

import torch


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
