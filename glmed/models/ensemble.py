"""Several trained GLNets that predict as one, averaging their probabilities.

A checkpoint ensemble (a run's best few epochs, or runs with other seeds) usually scores a
little higher than any one member. :class:`GLNetEnsemble` presents its members as a single
GLNet to :class:`~glmed.inference.inferer.GlobalLocalInferer`, so an ensemble goes wherever one
model goes: whole images, coarse-to-fine, ``refine="uncertain"``, test-time augmentation, and
slides streamed to a TIFF with resuming (the identity covers every member's weights).

How: each member's feature maps are stacked along the channel axis, member by member, so the
maps the inferer keeps, crops at patch boxes (:meth:`~glmed.models.glnet.GLNet.crop_global`, the
same for every channel) and stitches (bidirectional sharing's collect pass) carry every member's
channels; each method hands each member its own channels. Every head returns the log of the
members' mean probabilities, whose softmax, which the inferer takes, is that mean (to float
rounding): the mask is the arg-max of the mean probability, per patch and therefore after the
patches are merged.

Coarse-to-fine: the global head's answer is the members' mean global probability, so the coarse
mask, and with it the boxes, come from one averaged coarse pass; every member then refines the
same boxes. (Each member's own boxes, united, would refine more, and each member's box view
would differ from the others', so their patches could not be averaged.) The box rule (and
``grow_boxes``) are the first member's, overridable per prediction as for one model.

The members run one after another on each batch: compute and the device memory of the global
maps grow with their number. All members must share one architecture (classes, backbone,
sharing, widths and sizes); they differ in their weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from glmed.conventions import Size
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.glnet import GLNet

ARCHITECTURE = ("num_classes", "backbone", "sharing", "fpn_channels", "in_channels", "global_size", "patch_size")
"""Config fields every member of an ensemble must share: what shapes the maps and the outputs."""


class GLNetEnsemble(GLNet):
    """GLNets of one architecture predicting together: the mean of their probabilities.

    Args:
        members: the trained networks (at least one), left as they are; the ensemble holds
            them as submodules, so it moves, evaluates and digests them together.

    For inference only (:func:`glmed.predict`, :func:`glmed.predict_to_tiff`); train the
    members one by one. Build one with :func:`ensemble`, which picks the coarse-to-fine kind
    when the members are coarse-to-fine.
    """

    def __init__(self, members: Sequence[GLNet]) -> None:
        nn.Module.__init__(self)  # not GLNet's: the ensemble has no branches of its own
        members = list(members)
        problem = ensemble_problem(members)
        if problem is not None:
            raise ValueError(problem)
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    @property
    def networks(self) -> list[GLNet]:
        """The members, in order (typed: :attr:`members` is their :class:`~torch.nn.ModuleList`)."""
        return [cast(GLNet, member) for member in self.members]

    # -- branches: each member on its own channels -----------------------------------------

    def global_features(
        self, image: torch.Tensor, local_context: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Every member's global maps, stacked along the channels (member by member)."""
        contexts = self._split(local_context)
        return _stacked([member.global_features(image, context)
                         for member, context in zip(self.networks, contexts, strict=True)])

    def local_features(
        self,
        patches: torch.Tensor,
        global_maps: dict[str, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        *,
        points: Any = None,
        encoded: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every member's local maps of the same patches, each with its own global maps, stacked along the channels.

        ``encoded`` (channel-stacked encoder maps, as this method returns them) hands each member its own block.
        """
        encodings = self._split(dict(encoded) if encoded is not None else None)
        return _stacked([member.local_features(patches, maps, boxes, image_index, points=points, encoded=encoding)
                         for member, maps, encoding in zip(self.networks, self._split(global_maps), encodings,
                                                           strict=True)])

    # -- heads: the log of the mean probability -------------------------------------------

    def global_logits(self, global_maps: dict[str, torch.Tensor], size: Size) -> torch.Tensor:
        """The log of the members' mean global probabilities (their softmax is that mean)."""
        return mean_log_probabilities([member.global_logits(maps, size)
                                       for member, maps in zip(self.networks, self._parts(global_maps), strict=True)])

    def local_logits(self, local_maps: dict[str, torch.Tensor], size: Size) -> torch.Tensor:
        """The log of the members' mean local-branch probabilities."""
        return mean_log_probabilities([member.local_logits(maps, size)
                                       for member, maps in zip(self.networks, self._parts(local_maps), strict=True)])

    def aggregated_logits(
        self, local_final: torch.Tensor, global_final_crop: torch.Tensor, size: Size
    ) -> torch.Tensor:
        """The log of the members' mean aggregated probabilities, each from its own maps."""
        count = len(self.members)
        return mean_log_probabilities([
            member.aggregated_logits(local, crop, size)
            for member, local, crop in zip(self.networks, local_final.chunk(count, dim=1),
                                           global_final_crop.chunk(count, dim=1), strict=True)])

    def aggregated_logits_at_boxes(
        self,
        local_final: torch.Tensor,
        global_maps: dict[str, torch.Tensor],
        boxes: torch.Tensor,
        image_index: torch.Tensor,
        size: Size,
    ) -> torch.Tensor:
        """The log of the members' mean aggregated probabilities, each from its own maps (no crop)."""
        count = len(self.members)
        return mean_log_probabilities([
            member.aggregated_logits_at_boxes(local, maps, boxes, image_index, size)
            for member, local, maps in zip(self.networks, local_final.chunk(count, dim=1),
                                           self._parts(global_maps), strict=True)])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: an ensemble is for inference; train its members."""
        raise TypeError("a GLNetEnsemble predicts with trained members; train each member (a GLNet) instead")

    def _split(self, maps: dict[str, torch.Tensor] | None) -> list[dict[str, torch.Tensor] | None]:
        """Each member's share of channel-stacked maps (None for each when there are none)."""
        if maps is None:
            return [None] * len(self.members)
        return list(self._parts(maps))

    def _parts(self, maps: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Each member's share of channel-stacked maps: its own block of channels at every point."""
        count = len(self.members)
        chunks = {point: tensor.chunk(count, dim=1) for point, tensor in maps.items()}
        return [{point: parts[number] for point, parts in chunks.items()} for number in range(count)]


class CoarseToFineEnsemble(GLNetEnsemble, CoarseToFineGLNet):
    """Coarse-to-fine members predicting together.

    One averaged coarse pass draws the boxes, and every member refines them (see the module's notes).
    """


def ensemble(models: GLNet | Sequence[GLNet]) -> GLNet:
    """``models`` as one network: a single model as it is, several as a :class:`GLNetEnsemble`.

    Coarse-to-fine members give a :class:`CoarseToFineEnsemble`. Members of different
    architectures, or a mix of coarse-to-fine and plain GLNets, are refused with the reason.
    """
    if isinstance(models, GLNet):
        return models
    members = list(models)
    if len(members) == 1:
        return members[0]
    if all(isinstance(member, CoarseToFineGLNet) for member in members):
        return CoarseToFineEnsemble(members)
    return GLNetEnsemble(members)


def ensemble_problem(members: Sequence[Any]) -> str | None:
    """Why ``members`` cannot predict together, or None."""
    if not members:
        return "an ensemble needs at least one model"
    strangers = [type(member).__name__ for member in members if not isinstance(member, GLNet)]
    if strangers:
        return f"an ensemble's members are GLNets; got {strangers}"
    if len({isinstance(member, CoarseToFineGLNet) for member in members}) > 1:
        return ("an ensemble's members are all coarse-to-fine or all plain GLNets: the first refine boxes, the "
                "others whole images; use models of one kind")
    first = members[0].config
    for number, member in enumerate(members[1:], start=2):
        differ = [name for name in ARCHITECTURE if getattr(member.config, name) != getattr(first, name)]
        if differ:
            shown = ", ".join(f"{name} {getattr(first, name)!r} vs {getattr(member.config, name)!r}"
                              for name in differ)
            return (f"an ensemble's members share one architecture; model {number} differs from the first in "
                    f"{shown}: use checkpoints of one recipe configuration")
    return None


def mean_log_probabilities(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The log of the mean softmax (over dimension 1, the classes) of several ``N×K×...`` logits.

    Its softmax is the mean probability, up to float rounding; one member's logits come back as they are.
    """
    if len(logits) == 1:
        return logits[0]
    mean = torch.stack([member.float().softmax(dim=1) for member in logits]).mean(dim=0)
    return mean.clamp(min=torch.finfo(mean.dtype).tiny).log()


def _stacked(maps: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Maps of the same points from several members, concatenated along the channels in member order."""
    return {point: torch.cat([member[point] for member in maps], dim=1) for point in maps[0]}
