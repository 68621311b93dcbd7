"""One GLNet branch: a feature pyramid network over a ResNet, open to the other branch's maps.

A branch exposes twelve named maps, the places where GLNet shares features:
``c2``–``c5`` (ResNet stage outputs where they enter the FPN's lateral convolutions),
``p2``–``p5`` (top-down maps entering the first smoothing convolutions) and
``s2``–``s5`` (first smoothing outputs entering the second). At each place the branch may
take the partner branch's map of the same name; the convolution that consumes it then
sees both, exactly as a convolution over their channel concatenation would (the kernel
is split in two, ``conv(own) + conv(partner)``), which also makes an absent partner the
same as an all-zero one without allocating it. The partner's half is computed by whoever
supplies the partner's map (:data:`PartnerFn`), so the local branch can convolve its global
crops at the global map's resolution (:mod:`glmed.models.crop_convolution`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from glmed.conventions import Size
from glmed.models.resnet import BACKBONES, ResNetEncoder

LEVELS = (2, 3, 4, 5)
ENCODER_POINTS = tuple(f"c{k}" for k in LEVELS)
TOPDOWN_POINTS = tuple(f"p{k}" for k in LEVELS)
SMOOTH_POINTS = tuple(f"s{k}" for k in LEVELS)
SHARED_POINTS = ENCODER_POINTS + TOPDOWN_POINTS + SMOOTH_POINTS
FINAL = "final"
"""The branch's last map: the four pyramid outputs upsampled to 1/4 and concatenated."""
ALL_POINTS = SHARED_POINTS + (FINAL,)
"""Every map a branch can return: the twelve shared points and ``final``."""

PartnerFn = Callable[[str, Size, nn.Conv2d], torch.Tensor | None]
"""Given a shared point's name, the spatial size of this branch's map there and the
convolution that reads the partner's map there, return that convolution applied to the
partner branch's map at that size (or None where nothing is shared). The convolution is
handed over rather than applied here because the cheapest way to apply it depends on where
the partner's map comes from: the local branch's global crops are convolved before they are
resampled (:func:`glmed.models.crop_convolution.convolve_crops`)."""


class FusedConv(nn.Module):
    """A convolution over ``own`` and, when present, a partner map concatenated to it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, partner_channels: int = 0) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.partner_conv = (
            nn.Conv2d(partner_channels, out_channels, kernel_size, padding=padding, bias=False)
            if partner_channels
            else None
        )

    @property
    def takes_partner(self) -> bool:
        """Whether this convolution was built with a partner input (a kernel half for it)."""
        return self.partner_conv is not None

    def forward(self, own: torch.Tensor, partner_term: torch.Tensor | None = None) -> torch.Tensor:
        """``conv(own) + partner_term``: the convolution of own and partner maps' channel concatenation.

        ``partner_term`` is ``partner_conv`` already applied to the partner's map (see
        :data:`PartnerFn`); without it the result is ``conv(own)``, what an all-zero partner
        map would give.
        """
        out = self.conv(own)
        if partner_term is not None:
            if self.partner_conv is None:
                raise ValueError("this convolution was built without a partner input")
            out = out + partner_term
        return out


class FPNBranch(nn.Module):
    """ResNet encoder + FPN decoder that returns every shared map and its final map (or only those asked for).

    Args:
        backbone: ResNet name (``resnet18``, ``resnet34``, ``resnet50``).
        fpn_channels: width of the pyramid (256 in the paper); the final map has twice this.
        partner_channels: for each shared point this branch listens to, the partner's
            channel count there.
        in_channels: image channels.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        fpn_channels: int = 256,
        partner_channels: Mapping[str, int] | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if fpn_channels < 2 or fpn_channels % 2:
            raise ValueError(f"fpn_channels must be an even number >= 2, got {fpn_channels}")
        partner_channels = dict(partner_channels or {})
        unknown = set(partner_channels) - set(SHARED_POINTS)
        if unknown:
            raise ValueError(f"unknown shared points {sorted(unknown)}; choose from {SHARED_POINTS}")
        self.encoder = ResNetEncoder(backbone, in_channels=in_channels)
        width, half = fpn_channels, fpn_channels // 2
        self.lateral = nn.ModuleList(
            FusedConv(c, width, 1, partner_channels.get(f"c{k}", 0))
            for k, c in zip(LEVELS, self.encoder.out_channels, strict=True)
        )
        self.smooth = nn.ModuleList(FusedConv(width, width, 3, partner_channels.get(f"p{k}", 0)) for k in LEVELS)
        self.refine = nn.ModuleList(FusedConv(width, half, 3, partner_channels.get(f"s{k}", 0)) for k in LEVELS)
        self.map_channels = map_channels(backbone, fpn_channels)

    @property
    def partner_points(self) -> tuple[str, ...]:
        """The shared points where this branch takes the partner's map."""
        return tuple(point for point, conv in self._fused() if conv.takes_partner)

    def partner_convs(self) -> list[nn.Conv2d]:
        """The convolutions that read the partner's maps (empty when the branch takes none)."""
        return [conv.partner_conv for _, conv in self._fused() if conv.partner_conv is not None]

    def _stages(self) -> tuple[list[FusedConv], list[FusedConv], list[FusedConv]]:
        """The lateral, smoothing and refining convolutions, one per level each.

        The ModuleLists hold nothing but FusedConv (built in ``__init__``); torch types their
        items as plain modules.
        """
        return (
            cast("list[FusedConv]", list(self.lateral)),
            cast("list[FusedConv]", list(self.smooth)),
            cast("list[FusedConv]", list(self.refine)),
        )

    def _fused(self) -> list[tuple[str, FusedConv]]:
        lateral, smooth, refine = self._stages()
        return list(zip(ENCODER_POINTS + TOPDOWN_POINTS + SMOOTH_POINTS, lateral + smooth + refine, strict=True))

    def forward(
        self,
        image: torch.Tensor,
        partner: PartnerFn | None = None,
        points: Collection[str] | None = None,
        encoded: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``B×C×H×W`` image → dict of the twelve shared maps and ``final`` (``B×2F×H/4×W/4``).

        Args:
            image: ``B×C×H×W`` normalised images.
            partner: the partner branch's maps at the shared points this branch listens to.
            points: the maps the caller will read (names of :data:`ALL_POINTS`); None computes
                every one. Given, the decoder stops once those exist: the top-down path only down
                to the lowest level asked for, the smoothing convolutions only where an ``s`` map
                (or ``final``) is asked for, the refining convolutions and ``final`` only for
                ``final``, and the partner maps of skipped convolutions are never requested. The
                encoder always runs whole, so every ``c`` map is returned. Bidirectional
                sharing's collect pass reads the twelve shared maps alone and so skips the four
                refining convolutions (with their partner halves and crops) and the final
                concatenation. Each map returned is computed by the same operations in the same
                order as without ``points``, so it is the same bit for bit.
            encoded: this very ``image``'s encoder maps (``c2``–``c5``) from an earlier pass of
                the branch, used instead of running the encoder again. The partner's maps enter
                after the encoder (at the lateral convolutions), so the encoder's output does not
                depend on them: bidirectional sharing's final pass can take the collect pass's
                maps (``reuse_encoder`` of :func:`glmed.predict`) and skip the encoder, the
                same bit for bit.

        Returns:
            The requested maps, and any other computed on the way (every ``c`` map at least).
        """
        wanted = ALL_POINTS if points is None else frozenset(points)
        unknown = set(wanted) - set(ALL_POINTS)
        if unknown:
            raise ValueError(f"unknown branch maps {sorted(unknown)}; choose from {ALL_POINTS}")
        with_final = FINAL in wanted
        smoothed_levels = {k for k in LEVELS if with_final or f"s{k}" in wanted}
        topdown_levels = smoothed_levels | {k for k in LEVELS if f"p{k}" in wanted}
        lowest = min(topdown_levels, default=LEVELS[-1] + 1)  # above every level: no top-down map at all

        if encoded is None:
            encoded = dict(zip(ENCODER_POINTS, self.encoder(image), strict=True))
        else:
            encoded = _checked_encoding(encoded, len(image))
        maps: dict[str, torch.Tensor] = dict(encoded)
        lateral_convs, smooth_convs, refine_convs = self._stages()

        def fused(conv: FusedConv, point: str, own: torch.Tensor) -> torch.Tensor:
            if partner is None or conv.partner_conv is None:
                return conv(own, None)
            size = (int(own.shape[-2]), int(own.shape[-1]))
            return conv(own, partner(point, size, conv.partner_conv))

        topdown: torch.Tensor | None = None
        for index in reversed(range(len(LEVELS))):
            k = LEVELS[index]
            if k < lowest:
                break
            lateral = fused(lateral_convs[index], f"c{k}", encoded[f"c{k}"])
            topdown = lateral if topdown is None else lateral + _resize(topdown, lateral.shape[-2:])
            maps[f"p{k}"] = topdown
        outputs = []
        for index, k in enumerate(LEVELS):
            if k not in smoothed_levels:
                continue
            smoothed = F.relu(fused(smooth_convs[index], f"p{k}", maps[f"p{k}"]))
            maps[f"s{k}"] = smoothed
            if with_final:
                outputs.append(F.relu(fused(refine_convs[index], f"s{k}", smoothed)))
        if with_final:
            size = outputs[0].shape[-2:]
            maps[FINAL] = torch.cat([_resize(o, size) for o in outputs], dim=1)
        return maps


def _checked_encoding(encoded: Mapping[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
    """``encoded`` as a dict of the four encoder maps, refused when a level is missing or holds another batch."""
    missing = [point for point in ENCODER_POINTS if point not in encoded]
    if missing:
        raise ValueError(f"encoded maps lack {missing}; give all of {ENCODER_POINTS}")
    sizes = {point: int(encoded[point].shape[0]) for point in ENCODER_POINTS}
    if any(size != batch for size in sizes.values()):
        raise ValueError(f"encoded maps hold batches of {sizes}, but the image batch has {batch}")
    return {point: encoded[point] for point in ENCODER_POINTS}


def map_channels(backbone: str, fpn_channels: int) -> dict[str, int]:
    """Channel count of every shared map and of ``final`` for a branch of this shape."""
    block, _ = BACKBONES[backbone]
    encoder_channels = [w * block.expansion for w in (64, 128, 256, 512)]
    return {
        **{f"c{k}": c for k, c in zip(LEVELS, encoder_channels, strict=True)},
        **{f"p{k}": fpn_channels for k in LEVELS},
        **{f"s{k}": fpn_channels for k in LEVELS},
        FINAL: fpn_channels // 2 * len(LEVELS),
    }


def _resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
