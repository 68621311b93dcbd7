"""GLNet: collaborative global-local networks (Chen et al., CVPR 2019).

The module wires parts and holds no state between calls: a global branch for the
downsampled image, a local branch for full-resolution patches, the sharing between them,
an auxiliary head per branch and an aggregation head over both. The loop over an image's
patches (and bidirectional sharing's collect-then-global-then-local order) lives in
:class:`glmed.inference.inferer.GlobalLocalInferer` and in the trainer, never here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from glmed.conventions import Size
from glmed.models.crop_convolution import CropResampling, convolve_crops
from glmed.models.fpn import FINAL, SHARED_POINTS, SMOOTH_POINTS, FPNBranch, PartnerFn, map_channels
from glmed.models.resnet import BACKBONES, load_pretrained
from glmed.models.sharing import crop_to_patches


class Sharing(str, Enum):
    """The paper's ablation rows (Table 2) as feature-sharing modes.

    ``global_only`` / ``local_only`` are the single-branch baselines; ``none`` has both
    branches joined only by the aggregation head and the feature-map regulariser;
    ``g2l_shallow`` shares global→local at one stage (the last smoothing maps, right
    before the branches' final maps); ``g2l`` at every stage; ``bidirectional`` adds
    local→global at every stage.
    """

    GLOBAL_ONLY = "global_only"
    LOCAL_ONLY = "local_only"
    NONE = "none"
    G2L_SHALLOW = "g2l_shallow"
    G2L = "g2l"
    BIDIRECTIONAL = "bidirectional"

    @property
    def has_global(self) -> bool:
        """Whether the mode has a global branch (every mode but ``local_only``)."""
        return self is not Sharing.LOCAL_ONLY

    @property
    def has_local(self) -> bool:
        """Whether the mode has a local branch (every mode but ``global_only``)."""
        return self is not Sharing.GLOBAL_ONLY

    @property
    def global_to_local_points(self) -> tuple[str, ...]:
        """Shared points where the local branch takes the global branch's maps."""
        if self is Sharing.G2L_SHALLOW:
            return SMOOTH_POINTS
        if self in (Sharing.G2L, Sharing.BIDIRECTIONAL):
            return SHARED_POINTS
        return ()

    @property
    def local_to_global_points(self) -> tuple[str, ...]:
        """Shared points where the global branch takes the stitched local maps."""
        return SHARED_POINTS if self is Sharing.BIDIRECTIONAL else ()


def setting(default: Any, help: str, **command_line: Any) -> Any:
    """A config field with its one-line help (and argparse options).

    The recipes' command lines are built from the config itself, so each setting is
    described once.
    """
    return field(default=default, metadata={"help": help, **command_line})


@dataclass(frozen=True)
class GLNetConfig:
    """Everything needed to rebuild a GLNet; saved beside its weights in checkpoints.

    The one list of a GLNet's settings and their valid ranges (:meth:`model_problems`): the
    model, the recipes' command lines (:mod:`glmed.experiments.config`) and checkpoints all
    read it. Defaults are the paper's: ResNet50-FPN, 508-pixel global image and patches,
    50-pixel minimum overlap.
    """

    num_classes: int = setting(2, "output classes, background included", command_line=False)
    backbone: str = setting("resnet50", "ResNet of both branches", choices=sorted(BACKBONES))
    sharing: str = setting("bidirectional", "feature sharing between the branches (paper Table 2)",
                           choices=[mode.value for mode in Sharing])
    fpn_channels: int = setting(256, "FPN channels")
    in_channels: int = setting(3, "image channels", command_line=False)
    global_size: int = setting(508, "side of the downsampled global image, pixels")
    patch_size: int = setting(508, "side of the full-resolution patches, pixels")
    overlap: int = setting(50, "minimum overlap between neighbouring patches, pixels")
    trained_image_size: tuple[int, int] | None = setting(
        None, "median (height, width) of the training images, recorded by training; predictions on images far "
        "from it get a note", command_line=False)
    trained_mpp: float | None = setting(
        None, "µm per pixel of the training images (0.5 for 20x tiles), recorded in the checkpoint: "
        "glmed.predict_to_tiff reads slides that say their own µm/px at it by default (default: unknown, "
        "slides are read at level 0)", type=float, metavar="UM")

    def __post_init__(self) -> None:
        if self.trained_image_size is not None:  # JSON gives a list back
            object.__setattr__(self, "trained_image_size", tuple(int(v) for v in self.trained_image_size))
        problems = self.model_problems()
        if problems:
            raise ValueError("; ".join(f"{name} {getattr(self, name)!r}: {rule}" for name, rule in problems))

    def model_problems(self) -> list[tuple[str, str]]:
        """Every out-of-range setting as ``(field name, what is allowed)``; empty when all are valid."""
        found: list[tuple[str, str]] = []
        if self.num_classes < 2:
            found.append(("num_classes", "num_classes must be at least 2 (background included)"))
        if self.backbone not in BACKBONES:
            found.append(("backbone", f"unknown backbone; choose one of {sorted(BACKBONES)}"))
        if self.sharing not in {mode.value for mode in Sharing}:
            found.append(("sharing", f"unknown sharing mode; choose one of {[s.value for s in Sharing]}"))
        if self.fpn_channels < 1:
            found.append(("fpn_channels", "at least 1"))
        for name in ("global_size", "patch_size"):
            if getattr(self, name) < 32:
                found.append((name, f"{name} must be at least 32 pixels"))
        if not 0 <= self.overlap < self.patch_size:
            found.append(("overlap", f"overlap must be in [0, patch_size {self.patch_size})"))
        if self.in_channels < 1:
            found.append(("in_channels", "must be positive"))
        if self.trained_mpp is not None and not (math.isfinite(self.trained_mpp) and self.trained_mpp > 0):
            found.append(("trained_mpp", "µm per pixel, a positive number (or None when unknown)"))
        return found

    @property
    def mode(self) -> Sharing:
        """The sharing mode as a :class:`Sharing` (the field holds its name, for JSON)."""
        return Sharing(self.sharing)

    def to_dict(self) -> dict[str, Any]:
        """Every field by name: what checkpoints and run folders store (JSON-friendly values)."""
        return asdict(self)


@dataclass
class GLNetOutput:
    """What one training/evaluation forward returns; the same fields every call for a mode.

    Attributes:
        logits: main output. Per patch (``N×K×p×p``, the aggregation head, or the local
            head for ``local_only``), or per image (``B×K×g×g``) for ``global_only``.
        local_logits: the local branch's own head, ``N×K×p×p`` (None without a local branch).
        global_logits: the global branch's own head, ``B×K×g×g`` (None without a global branch).
        local_final: the local branch's last map per patch (for the feature-map regulariser).
        global_final_crop: the global branch's last map cropped at each patch, same size.
    """

    logits: torch.Tensor
    local_logits: torch.Tensor | None
    global_logits: torch.Tensor | None
    local_final: torch.Tensor | None
    global_final_crop: torch.Tensor | None

    @property
    def logits_per_image(self) -> bool:
        """True when :attr:`logits` is per downsampled image rather than per patch."""
        return self.local_logits is None


class GLNet(nn.Module):
    """Collaborative global-local network with a selectable sharing mode.

    Args:
        num_classes: output classes, background included.
        backbone: ``resnet18``, ``resnet34`` or ``resnet50`` (the paper's).
        sharing: a :class:`Sharing` mode name.
        fpn_channels: FPN width (256 in the paper; smaller for tests).
        in_channels: image channels.
        global_size: side of the downsampled global image.
        patch_size: side of the full-resolution patches.
        overlap: minimum overlap between neighbouring patches.
        pretrained_backbone: path of an ImageNet ResNet state dict to load into both
            encoders; nothing is ever downloaded.

    The main methods, each returning the same type every call:
    :meth:`global_features`, :meth:`local_features`, :meth:`crop_global`,
    :meth:`heads`, and :meth:`forward` which composes them for a training step.
    """

    config_class: ClassVar[type[GLNetConfig]] = GLNetConfig
    """The configuration this class builds from its arguments (a subclass adds settings)."""

    def __init__(
        self,
        num_classes: int = 2,
        backbone: str = "resnet50",
        sharing: str | Sharing = "bidirectional",
        *,
        fpn_channels: int = 256,
        in_channels: int = 3,
        global_size: int = 508,
        patch_size: int = 508,
        overlap: int = 50,
        pretrained_backbone: str | os.PathLike | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        self.config = self.config_class(
            num_classes=num_classes,
            backbone=backbone,
            sharing=Sharing(sharing).value if isinstance(sharing, Sharing) else sharing,
            fpn_channels=fpn_channels,
            in_channels=in_channels,
            global_size=global_size,
            patch_size=patch_size,
            overlap=overlap,
            **settings,
        )
        mode = self.config.mode
        reference = map_channels(backbone, fpn_channels)
        final_channels = reference[FINAL]
        self.global_branch = (
            FPNBranch(backbone, fpn_channels, {p: reference[p] for p in mode.local_to_global_points}, in_channels)
            if mode.has_global
            else None
        )
        self.local_branch = (
            FPNBranch(backbone, fpn_channels, {p: reference[p] for p in mode.global_to_local_points}, in_channels)
            if mode.has_local
            else None
        )
        self.global_head = nn.Conv2d(final_channels, num_classes, 3, padding=1) if mode.has_global else None
        self.local_head = nn.Conv2d(final_channels, num_classes, 3, padding=1) if mode.has_local else None
        both = mode.has_global and mode.has_local
        self.aggregate = nn.Conv2d(2 * final_channels, num_classes, 3, padding=1) if both else None
        if pretrained_backbone is not None:
            for branch in (self.global_branch, self.local_branch):
                if branch is not None:
                    load_pretrained(branch.encoder, pretrained_backbone)

    @classmethod
    def from_config(
        cls, config: GLNetConfig | dict[str, object], pretrained_backbone: str | os.PathLike | None = None
    ) -> GLNet:
        """Build a model from a :class:`GLNetConfig` or its dict (e.g. from a checkpoint).

        Only the fields of this class's :attr:`config_class` are read.
        """
        values: dict[str, Any] = config.to_dict() if isinstance(config, GLNetConfig) else dict(config)
        names = {item.name for item in fields(cls.config_class)}
        return cls(**{k: v for k, v in values.items() if k in names}, pretrained_backbone=pretrained_backbone)

    @property
    def sharing(self) -> Sharing:
        """The model's sharing mode, from its config."""
        return self.config.mode

    @property
    def global_partner(self) -> nn.ModuleList | None:
        """The global branch's local→global convolutions (``bidirectional`` only), as one part.

        Training these alone teaches the global branch to use the stitched local maps while
        its behaviour without them stays as it was.
        """
        if self.global_branch is None or not self.global_branch.partner_points:
            return None
        return nn.ModuleList(self.global_branch.partner_convs())

    # -- branches ---------------------------------------------------------------------

    def global_features(
        self, image: torch.Tensor, local_context: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the global branch on ``B×C×g×g`` downsampled images.

        Args:
            image: ``B×C×g×g`` normalised global images.
            local_context: for ``bidirectional``, the stitched local maps at each shared
                point (from :class:`glmed.models.sharing.LocalToGlobalCanvas`); None runs the
                branch without them (the first, collect-free pass).
        """
        branch = self._require(self.global_branch, "global")
        partner: PartnerFn | None = None
        if local_context is not None:
            if not self.sharing.local_to_global_points:
                raise ValueError(f"sharing mode {self.sharing.value!r} takes no local context in the global branch")
            partner = lambda point, size, conv: conv(_checked_map(local_context, point, size))  # noqa: E731
        return branch(image, partner)

    def local_features(
        self,
        patches: torch.Tensor,
        global_maps: dict[str, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        *,
        points: Collection[str] | None = None,
        encoded: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the local branch on ``N×C×p×p`` patches, taking global maps where the mode shares.

        Args:
            patches: ``N×C×p×p`` normalised full-resolution patches.
            global_maps: output of :meth:`global_features` for the patches' images.
            boxes: ``N×4`` patch boxes as fractions of their image, best on the host (they are
                read there to place each crop's window; a GPU tensor is copied back).
            image_index: ``N`` index of each patch's image in ``global_maps``.
            points: the maps the caller will read (shared point names and/or ``final``); None
                computes them all. Fewer points skip the convolutions (and global crops) only
                the others need, bit-identically: bidirectional sharing's collect pass asks for
                :attr:`Sharing.local_to_global_points` and skips the refining convolutions and
                the final map (see :meth:`glmed.models.fpn.FPNBranch.forward`).
            encoded: these patches' encoder maps (``c2``–``c5``, as an earlier pass returned
                them), used instead of running the encoder again; the same bit for bit, as global
                maps enter only after the encoder (bidirectional sharing's final pass takes the
                collect pass's: ``reuse_encoder`` of :func:`glmed.predict`).
        """
        branch = self._require(self.local_branch, "local")
        if not self.sharing.global_to_local_points:
            return branch(patches, None, points, encoded)
        if global_maps is None or boxes is None or image_index is None:
            raise ValueError(f"sharing mode {self.sharing.value!r} needs the global maps, patch boxes and image index")
        # Read once per pass: each shared point places its crops' windows from them on the host.
        maps, where, owners = global_maps, boxes.detach().cpu(), image_index.detach().cpu()
        plans: dict[tuple[Size, Size, int], CropResampling] = {}  # per level and kernel: p and s share one

        def convolved_crop(point: str, size: Size, conv: nn.Conv2d) -> torch.Tensor:
            # conv(crop_global(...)) computed at the global map's resolution: the same values
            # to float rounding, at a few per cent of the cost (glmed.models.crop_convolution).
            return convolve_crops(maps[point], conv.weight, where, owners, size, plans)

        return branch(patches, convolved_crop, points, encoded)

    @staticmethod
    def crop_global(
        global_maps: dict[str, torch.Tensor],
        point: str,
        boxes: torch.Tensor,
        image_index: torch.Tensor,
        size: Size,
    ) -> torch.Tensor:
        """The global map at ``point``, cropped at each patch's box and resized to ``size``."""
        return crop_to_patches(global_maps[point], boxes, image_index, size)

    # -- heads ------------------------------------------------------------------------

    def global_logits(self, global_maps: dict[str, torch.Tensor], size: Size) -> torch.Tensor:
        """The global branch's own prediction, upsampled to ``size``."""
        head = self._require(self.global_head, "global")
        return _upsample(head(global_maps[FINAL]), size)

    def local_logits(self, local_maps: dict[str, torch.Tensor], size: Size) -> torch.Tensor:
        """The local branch's own prediction per patch, upsampled to ``size``."""
        head = self._require(self.local_head, "local")
        return _upsample(head(local_maps[FINAL]), size)

    def aggregated_logits(
        self, local_final: torch.Tensor, global_final_crop: torch.Tensor, size: Size
    ) -> torch.Tensor:
        """The main output per patch: the aggregation conv over both branches' last maps."""
        head = self._require(self.aggregate, "aggregation")
        return _upsample(head(torch.cat([local_final, global_final_crop], dim=1)), size)

    def aggregated_logits_at_boxes(
        self,
        local_final: torch.Tensor,
        global_maps: dict[str, torch.Tensor],
        boxes: torch.Tensor,
        image_index: torch.Tensor,
        size: Size,
    ) -> torch.Tensor:
        """:meth:`aggregated_logits` of the global final map cropped at ``boxes``, without the crop.

        The aggregation convolution's kernel is split into its local and global halves, and the
        global half is applied at the global map's resolution
        (:func:`~glmed.models.crop_convolution.convolve_crops`): the same logits to float
        rounding, without resampling the global final map to every patch's full map size or
        concatenating the two (``2F`` channels at the local map's size per patch: the largest
        tensor of an inference batch). Inference uses it; training needs the crop itself (for
        the feature-map regulariser) and calls :meth:`aggregated_logits`.

        Args:
            local_final: ``N×2F×h×w`` the local branch's final maps.
            global_maps: :meth:`global_features` of the patches' images (``final`` is read).
            boxes: ``N×4`` patch boxes as fractions of their image (best on the host).
            image_index: ``N`` each patch's image in ``global_maps``.
            size: the logits' output size (the patch size).
        """
        head = cast(nn.Conv2d, self._require(self.aggregate, "aggregation"))
        local_channels = int(local_final.shape[1])
        local_half = F.conv2d(local_final, head.weight[:, :local_channels], head.bias, padding=head.padding)
        global_half = convolve_crops(global_maps[FINAL], head.weight[:, local_channels:], boxes, image_index,
                                     spatial_size(local_final))
        return _upsample(local_half + global_half, size)

    # -- one training step ----------------------------------------------------------

    def forward(
        self,
        global_image: torch.Tensor,
        patches: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        local_context: dict[str, torch.Tensor] | None = None,
        train_global: bool = True,
    ) -> GLNetOutput:
        """Both branches on a mini-batch: downsampled images plus some of their patches.

        Args:
            global_image: ``B×C×g×g``.
            patches: ``N×C×p×p`` full-resolution patches (unused by ``global_only``).
            boxes: ``N×4`` their boxes as fractions of their image.
            image_index: ``N`` which of the ``B`` images each patch comes from.
            local_context: ``bidirectional`` only: stitched local maps of all the images'
                patches (see :class:`glmed.models.sharing.LocalToGlobalCanvas`).
            train_global: False runs the global branch without gradients (the paper's local
                stage): it saves the memory of its activations, and no loss term, the
                feature-map regulariser included, can then reach its parameters through
                the global maps the local branch consumed.
        """
        mode = self.sharing
        global_size = spatial_size(global_image)
        if mode is Sharing.GLOBAL_ONLY:
            if not train_global:
                raise ValueError("a global_only model has nothing to train without its global branch")
            global_maps = self.global_features(global_image)
            logits = self.global_logits(global_maps, global_size)
            return GLNetOutput(logits, None, logits, None, None)
        if patches is None:
            raise ValueError(f"sharing mode {mode.value!r} needs patches")
        patch_size = spatial_size(patches)
        if mode is Sharing.LOCAL_ONLY:
            local_maps = self.local_features(patches)
            logits = self.local_logits(local_maps, patch_size)
            return GLNetOutput(logits, logits, None, local_maps[FINAL], None)
        if boxes is None or image_index is None:
            raise ValueError(f"sharing mode {mode.value!r} needs the patches' boxes and image index")
        with torch.set_grad_enabled(train_global and torch.is_grad_enabled()):
            global_maps = self.global_features(global_image, local_context)
            global_logits = self.global_logits(global_maps, global_size)
        local_maps = self.local_features(patches, global_maps, boxes, image_index)
        local_final = local_maps[FINAL]
        global_crop = self.crop_global(global_maps, FINAL, boxes, image_index, spatial_size(local_final))
        return GLNetOutput(
            logits=self.aggregated_logits(local_final, global_crop, patch_size),
            local_logits=self.local_logits(local_maps, patch_size),
            global_logits=global_logits,
            local_final=local_final,
            global_final_crop=global_crop,
        )

    def _require(self, part: nn.Module | None, what: str) -> nn.Module:
        if part is None:
            raise ValueError(f"sharing mode {self.sharing.value!r} has no {what} branch")
        return part


def spatial_size(tensor: torch.Tensor) -> Size:
    """``(height, width)`` of a ``...×H×W`` tensor (its last two axes), as a :data:`Size`."""
    return (int(tensor.shape[-2]), int(tensor.shape[-1]))


def _checked_map(maps: dict[str, torch.Tensor], point: str, size: Size) -> torch.Tensor:
    if point not in maps:
        raise ValueError(f"local context lacks the shared map {point!r}")
    found = maps[point]
    if tuple(found.shape[-2:]) != tuple(size):
        raise ValueError(f"local context map {point!r} is {tuple(found.shape[-2:])}, the global map is {tuple(size)}")
    return found


def _upsample(logits: torch.Tensor, size: Size) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

