"""Turning image pixels into the network's input, the same way for training and inference.

Training (through :class:`glmed.data.transforms.GlobalLocald`) and the inferer both call
:func:`to_model_input`, so a model never sees differently scaled pixels at test time.
Pixels are scaled to [0, 1] by what their type means — 8-bit by 255, 16-bit by 65535, floats
as already in [0, 1] (what scikit-image's ``img_as_float`` gives) — then standardised per
channel with ImageNet's mean and standard deviation, which ResNet weights trained on ImageNet
expect. Anything else (floats outside [0, 1], signed integers) is refused with the range
seen, never guessed: a float image of 0-1 divided by 255 would be segmented as a black one.
``Normalization(max_value=...)`` states the scale explicitly (e.g. 255 for MONAI's
``LoadImaged``, which returns 8-bit files as float32 0-255).
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
        max_value: the value of a full-intensity pixel; None (the default) reads it from the
            pixels' type: 255 for uint8, 65535 for uint16, 1 for bool and for floats, which
            must then lie in [0, 1]. Give it to state the scale yourself (255 for float32
            pixels of 0-255).
        channels: channels the network takes. A single-channel image is replicated to
            this many channels; an RGBA image loses its alpha when ``channels`` is 3.
    """

    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    max_value: float | None = None
    channels: int = 3

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean {tuple(self.mean)} and std {tuple(self.std)} need one value per channel ({self.channels})"
            )
        if (self.max_value is not None and self.max_value <= 0) or any(s <= 0 for s in self.std):
            raise ValueError(f"max_value ({self.max_value}) and std {tuple(self.std)} must be positive")

    def __call__(self, array: np.ndarray | torch.Tensor, channel_axis: int = -1, name: str = "image") -> torch.Tensor:
        """Normalise one image or a batch; see :func:`to_model_input`."""
        return to_model_input(array, self, channel_axis=channel_axis, name=name)


DEFAULT_NORMALIZATION = Normalization()
"""The default normalisation: scale by the pixels' type, ImageNet mean and standard deviation.

One shared instance serves as every default argument; it is frozen, so sharing it is safe.
"""


def to_model_input(
    array: np.ndarray | torch.Tensor,
    normalization: Normalization = DEFAULT_NORMALIZATION,
    channel_axis: int = -1,
    name: str = "image",
) -> torch.Tensor:
    """Pixels as a float32 network input, channels first.

    Args:
        array: ``H×W`` (single channel), one image with channels on ``channel_axis``
            (``H×W×C`` by default, as readers return), or a batch of them
            (``N×H×W×C``, or ``N×C×H×W`` with ``channel_axis=1``).
        normalization: scaling, mean and standard deviation (by type, ImageNet, by default).
        channel_axis: the axis holding channels in a 3-D or 4-D ``array``.
        name: the image's name (its file) for error messages.

    Returns:
        ``C×H×W`` for one image or ``N×C×H×W`` for a batch, float32, on ``array``'s device.

    Raises:
        ValueError: naming ``name``, for pixels whose scale cannot be known from their type
            (floats outside [0, 1], signed integers) when ``normalization.max_value`` is None.
    """
    scale = normalization.max_value if normalization.max_value is not None else full_intensity(array, name)
    tensor = torch.as_tensor(array if not isinstance(array, np.ndarray) or array.dtype != np.uint16
                             else array.astype(np.int32))  # torch has few uint16 operations
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
    out = (tensor.to(torch.float32) / float(scale) - mean) / std
    return out if batched else out[0]


FLOAT_TOLERANCE = 1e-3
"""How far outside [0, 1] a float pixel may lie (resampling overshoot) before it is refused."""


def full_intensity(array: np.ndarray | torch.Tensor, name: str = "image") -> float:
    """The value of a full-intensity pixel, read from the pixels' type.

    uint8 → 255, uint16 → 65535, bool → 1, floats → 1 after checking they lie in [0, 1].

    Raises:
        ValueError: naming ``name`` and the range seen, for floats outside [0, 1] and for
            other integer types, whose scale cannot be told from the type.
    """
    dtype = str(array.dtype).removeprefix("torch.")  # one spelling for NumPy's and torch's types
    known = {"uint8": 255.0, "uint16": 65535.0, "bool": 1.0}
    if dtype in known:
        return known[dtype]
    values = torch.as_tensor(array) if isinstance(array, np.ndarray) and array.dtype.kind == "f" else array
    if isinstance(values, torch.Tensor) and values.is_floating_point():
        if values.numel():
            if bool(torch.isnan(values).any()):
                raise ValueError(f"{name}: the image holds NaN pixels; fill them (e.g. with 0) before segmenting")
            low, high = float(values.min()), float(values.max())
            if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
                raise ValueError(
                    f"{name}: float pixels must lie in [0, 1] (as skimage.img_as_float gives), found [{low:g}, "
                    f"{high:g}]; for 0-255 floats divide by 255, or pass Normalization(max_value=255) "
                    "(glmed predict --max-value 255)")
        return 1.0
    raise ValueError(f"{name}: pixels of type {dtype} have no known full-intensity value; convert the image to "
                     "uint8 (0-255), uint16 or float in [0, 1], or pass Normalization(max_value=...) "
                     "(glmed predict --max-value V)")


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
