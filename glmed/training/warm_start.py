"""Start a stage's new parts from what the model already knows, not from random weights.

The paper's stages add parts to a trained model: the local stage adds the aggregation head
(a 3×3 convolution over the local and the cropped global maps), the bidirectional stage adds
the local→global convolutions that feed stitched local maps into the global branch. Started
at random, both replace a trained answer with noise on the stage's first step, and a short
stage never recovers it. Measured on generated hard dermoscopy images (1024×1536, the ISIC
recipe's demo model, 8 training and 8 test images, one seed, 2026-11-30):

- bidirectional stage, local→global convolutions at PyTorch's default initialisation: before
  any bidirectional step the G⇄L model scored a Jaccard of 0.000 on the test images, against
  0.288 for the same weights read as G→L; zero-initialised, G⇄L starts exactly at G→L;
- local stage, aggregation head at random: G→L's mean Jaccard after local epochs 1-4 was
  0.028, 0.022, 0.589, 0.288; started from the global head (global half = the global head's
  kernel, local half = 0) it begins at 0.749 and reads 0.443, 0.655, 0.723, 0.606.

Zero-initialising an added branch so the network starts as the one without it is the usual
way to add capacity to a trained network; the aggregation head's global half is the global
head's kernel applied to the upsampled global maps, which is the global answer up to
where the upsampling happens. Gradients still reach the zeroed weights (their inputs are not
zero), so nothing is frozen: the stage learns what the new input adds.
"""

from __future__ import annotations

import torch

from glmed.models.glnet import GLNet
from glmed.training.stages import LISTENING_PART, Stage


@torch.no_grad()
def warm_start(model: GLNet, stage: Stage) -> list[str]:
    """Initialise the parts ``stage.warm_start`` names; returns a line per part for the log.

    ``"aggregate"``: the aggregation head's output channels become the global head's answer
    on the cropped global maps (its kernel and bias on the global half of the input, zero on
    the local half), so G→L starts as the global branch. ``"global_partner"``: every
    local→global convolution becomes zero, so G⇄L starts as G→L. A part the model lacks
    (no global head, no local→global sharing) is skipped and says so.
    """
    lines = []
    for part in stage.warm_start:
        if part == "aggregate":
            lines.append(_aggregate_from_global_head(model))
        elif part == LISTENING_PART:
            lines.append(_silence_global_partner(model))
        else:
            raise ValueError(f"stage {stage.name!r}: no warm start for {part!r}")
    return lines


def _aggregate_from_global_head(model: GLNet) -> str:
    if model.aggregate is None or model.global_head is None:
        return "warm start: no aggregation head with a global head to start it from; left as it was"
    head, aggregate = model.global_head, model.aggregate
    local_channels = aggregate.in_channels - head.in_channels  # the aggregate reads [local, global crop]
    if aggregate.kernel_size != head.kernel_size or local_channels < 0:
        raise ValueError("the aggregation head and the global head do not fit together: "
                         f"{tuple(aggregate.weight.shape)} against {tuple(head.weight.shape)}")
    aggregate.weight.zero_()
    aggregate.weight[:, local_channels:].copy_(head.weight)
    if aggregate.bias is not None and head.bias is not None:
        aggregate.bias.copy_(head.bias)
    return "warm start: the aggregation head starts as the global head (its local half at zero)"


def _silence_global_partner(model: GLNet) -> str:
    partner = model.global_partner
    if partner is None:
        return "warm start: the model has no local→global convolutions; nothing to zero"
    for parameter in partner.parameters():
        parameter.zero_()
    return "warm start: the local→global convolutions start at zero (G⇄L starts as G→L)"
