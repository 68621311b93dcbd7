"""Turning image pixels into the network's input, the same way for training and inference.

Training (through :class:`glmed.data.transforms.GlobalLocald`) and the inferer both call
:func:`to_model_input`, so a model never sees differently scaled pixels at test time. The
scaling is explicit: pixels are divided by ``max_value`` (255 for 8-bit images, whatever
their dtype: MONAI's ``LoadImaged`` returns 8-bit files as float32 0-255), then
standardised per channel with ImageNet's mean and standard deviation, which ResNet
weights trained on ImageNet expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of ImageNet RGB images scaled to [0, 1]."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of ImageNet RGB images scaled to [0, 1]."""


@dataclass(frozen=True)
class Normalization:
    """How pixels become network input: ``(pixel / max_value - mean) / std`` per channel.

    Attributes:
        mean: per-channel mean, in units of ``pixel / max_value``.
        std: per-channel standard deviation, same units.
        max_value: the value of a full-intensity pixel: 255 for 8-bit images, 65535 for
            16-bit ones, 1.0 for images already scaled to [0, 1].
        channels: channels the network takes. A single-channel image is replicated to
            this many channels; an RGBA image loses its alpha when ``channels`` is 3.
    """

    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    max_value: float = 255.0
    channels: int = 3

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean {tuple(self.mean)} and std {tuple(self.std)} need one value per channel ({self.channels})"
            )
        if self.max_value <= 0 or any(s <= 0 for s in self.std):
            raise ValueError(f"max_value ({self.max_value}) and std {tuple(self.std)} must be positive")

    def __call__(self, array: np.ndarray | torch.Tensor, channel_axis: int = -1) -> torch.Tensor:
        """Normalise one image or a batch; see :func:`to_model_input`."""
        return to_model_input(array, self, channel_axis=channel_axis)


DEFAULT_NORMALIZATION = Normalization()
"""The default normalisation: 8-bit pixels, ImageNet mean and standard deviation.

One shared instance serves as every default argument; it is frozen, so sharing it is safe.
"""


def to_model_input(
    array: np.ndarray | torch.Tensor,
    normalization: Normalization = DEFAULT_NORMALIZATION,
    channel_axis: int = -1,
) -> torch.Tensor:
    """Pixels as a float32 network input, channels first.

    Args:
        array: ``H×W`` (single channel), one image with channels on ``channel_axis``
            (``H×W×C`` by default, as readers return), or a batch of them
            (``N×H×W×C``, or ``N×C×H×W`` with ``channel_axis=1``). Any numeric dtype.
        normalization: scaling, mean and standard deviation (ImageNet, 8-bit by default).
        channel_axis: the axis holding channels in a 3-D or 4-D ``array``.

    Returns:
        ``C×H×W`` for one image or ``N×C×H×W`` for a batch, float32, on ``array``'s device.
    """
    tensor = torch.as_tensor(array)
    if tensor.ndim == 2:
        tensor, channel_axis = tensor[None], 0
    if tensor.ndim not in (3, 4):
        raise ValueError(f"expected an H×W, H×W×C or N×H×W×C image, got shape {tuple(tensor.shape)}")
    batched = tensor.ndim == 4
    tensor = torch.movedim(tensor, channel_axis, 1 if batched else 0)
    if not batched:
        tensor = tensor[None]
    tensor = _match_channels(tensor, normalization.channels)
    mean = torch.tensor(normalization.mean, dtype=torch.float32, device=tensor.device).view(1, -1, 1, 1)
    std = torch.tensor(normalization.std, dtype=torch.float32, device=tensor.device).view(1, -1, 1, 1)
    out = (tensor.to(torch.float32) / float(normalization.max_value) - mean) / std
    return out if batched else out[0]


def _match_channels(batch: torch.Tensor, channels: int) -> torch.Tensor:
    """``N×C×H×W`` with ``C`` made equal to ``channels`` (grey replicated, alpha dropped)."""
    found = batch.shape[1]
    if found == channels:
        return batch
    if found == 1:
        return batch.expand(-1, channels, -1, -1)
    if found == 4 and channels == 3:
        return batch[:, :3]
    raise ValueError(
        f"the image has {found} channels and the network takes {channels}; "
        "check channel_axis, or give Normalization the image's channel count"
    )
