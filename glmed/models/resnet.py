"""ResNet encoders in plain torch, with the parameter names of the usual ImageNet state dicts.

torchvision cannot be installed beside the project's torch build, so the ResNet lives
here. Its attribute names (``conv1``, ``bn1``, ``layer1``... ``downsample.0``) match the
standard ImageNet checkpoints, so a weights file the user downloaded loads unchanged.
Nothing is downloaded: :func:`load_pretrained` reads a path the user gives.
"""

from __future__ import annotations

import os

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (ResNet18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×C×H×W`` → ``B×width×H/stride×W/stride``: two 3×3 convolutions plus the shortcut."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand, with a residual connection (ResNet50)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×C×H×W`` → ``B×4·width×H/stride×W/stride``: reduce, convolve, expand, plus the shortcut."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


BACKBONES: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNetEncoder(nn.Module):
    """A ResNet without its classifier, returning the conv2–conv5 stage outputs.

    Args:
        name: one of :data:`BACKBONES`.
        in_channels: image channels (3 for RGB; another count only without pretrained weights).

    The outputs are at 1/4, 1/8, 1/16 and 1/32 of the input size, with
    :attr:`out_channels` channels each.
    """

    def __init__(self, name: str = "resnet50", in_channels: int = 3) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
        block, depths = BACKBONES[name]
        self.name = name
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        stages: list[nn.Sequential] = []
        for index, (width, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(depth):
                blocks.append(block(channels, width, stride if block_index == 0 else 1))
                channels = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels: tuple[int, ...] = tuple(w * block.expansion for w in (64, 128, 256, 512))
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``B×C×H×W`` image → ``[c2, c3, c4, c5]`` feature maps."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    # Zero the last BN of each residual branch so every block starts as the identity.
    for m in module.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


def load_pretrained(encoder: ResNetEncoder, path: str | os.PathLike) -> None:
    """Load an ImageNet ResNet state dict from a file into ``encoder``.

    Accepts a plain state dict or a checkpoint holding one under ``state_dict``/``model``,
    with or without a ``module.`` prefix; the classifier (``fc.*``) is ignored. Every
    encoder parameter must be present with the right shape, so a ResNet50 file given for
    a ResNet18 encoder is refused with a message rather than half-loaded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained backbone file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a bad file
        from glmed.models.checkpoint import unreadable_reason  # here: checkpoint imports this module

        raise ValueError(f"{path}: not a readable PyTorch state dict ({unreadable_reason(path, error)})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (a mapping of parameter names to tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    own = encoder.state_dict()
    # The published ImageNet files predate BatchNorm's num_batches_tracked counters: start them at 0.
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(own[key])
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        details = "; ".join(
            f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
            if keys
        )
        raise ValueError(f"{path}: does not fit a {encoder.name} encoder ({details})")
    encoder.load_state_dict(state)
