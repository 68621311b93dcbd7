"""Staged GLNet training: each stage says which parts learn, and the step follows it.

The paper trains in stages: the global branch alone; then the local branch (with the
aggregation head and the feature-map regulariser) while the global branch stays fixed;
then, for bidirectional sharing, the global branch again while the local branch stays
fixed and feeds it every patch's features. A :class:`Stage` is plain data describing one
of these, so a schedule is a list and can be saved, printed or changed without code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from glmed.models.glnet import Sharing

GLOBAL_PARTS = ("global_branch", "global_head")
"""The global branch and its head: what the global stage trains."""
LOCAL_PARTS = ("local_branch", "local_head", "aggregate")
"""The local branch, its head and the aggregation head: what the local stage trains."""
LISTENING_PART = "global_partner"
"""The global branch's local→global convolutions alone (see :attr:`GLNet.global_partner`)."""
PARTS = GLOBAL_PARTS + (LISTENING_PART,) + LOCAL_PARTS
WARM_STARTS = ("aggregate", LISTENING_PART)
"""The parts a stage can start warm (:attr:`Stage.warm_start`)."""


@dataclass(frozen=True)
class Stage:
    """One training stage.

    Attributes:
        name: shown in logs and checkpoints.
        trainable: the model parts that learn (from :data:`PARTS`); all others are frozen.
        epochs: passes over the training data.
        collect_local: stitch every patch's local features onto the global grid before
            the global pass (bidirectional sharing); needs samples carrying all their patches.
        warm_start: parts (from :data:`WARM_STARTS`) to start from what the model already knows
            when the stage begins at its first epoch (:func:`glmed.training.warm_start.warm_start`):
            ``"aggregate"`` from the global head, ``"global_partner"`` from zero. A run resumed
            inside the stage keeps its weights; a second ``fit`` that repeats a stage to train it
            further should pass ``warm_start=()``.
    """

    name: str
    trainable: tuple[str, ...]
    epochs: int = 1
    collect_local: bool = False
    warm_start: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "warm_start", tuple(self.warm_start))
        unknown = set(self.trainable) - set(PARTS)
        if unknown or not self.trainable:
            raise ValueError(f"stage {self.name!r}: trainable parts must be a non-empty subset of {PARTS}, "
                             f"got {tuple(self.trainable)}")
        unknown_starts = set(self.warm_start) - set(WARM_STARTS)
        if unknown_starts or not set(self.warm_start) <= set(self.trainable):
            raise ValueError(f"stage {self.name!r}: warm_start must name parts the stage trains, from {WARM_STARTS}, "
                             f"got {tuple(self.warm_start)}")
        if self.epochs < 0:
            raise ValueError(f"stage {self.name!r}: epochs must be >= 0, got {self.epochs}")

    @property
    def global_only(self) -> bool:
        """True when only global parts learn: the step then runs the global branch alone."""
        return set(self.trainable) <= set(GLOBAL_PARTS)

    def to_dict(self) -> dict[str, Any]:
        """The stage's fields by name, as checkpoints record the schedule (to refuse a mismatched resume).

        ``warm_start`` is left out while empty, so runs recorded before it existed still resume.
        """
        values = asdict(self)
        values["warm_start"] = list(self.warm_start)
        if not self.warm_start:
            del values["warm_start"]
        return values


def paper_stages(sharing: str | Sharing, epochs: Sequence[int] = (1, 1, 1)) -> list[Stage]:
    """The paper's schedule for a sharing mode: global, then local, then bidirectional.

    ``epochs`` gives each stage's epochs in that order; stages a mode lacks are skipped.
    The local and bidirectional stages start warm (:attr:`Stage.warm_start`): each begins as
    the model the stage before left, so a stage's first steps refine a trained answer instead
    of replacing it with a random one (measured in :mod:`glmed.training.warm_start`).
    The bidirectional stage trains the global branch's local→global convolutions and the
    aggregation head, everything else fixed. The global branch without local context —
    the collect pass, and coarse-to-fine's coarse pass — then stays exactly the global
    stage's, as the original code's frozen copy of the global branch kept it, without the
    copy; training the whole global branch here instead drifts it towards views with local
    context and spoils those passes (measured: coarse-to-fine G⇄L fell below G→L).
    """
    mode = Sharing(sharing)
    global_epochs, local_epochs, both_epochs = (list(epochs) + [1, 1, 1])[:3]
    if mode is Sharing.GLOBAL_ONLY:
        return [Stage("global", GLOBAL_PARTS, global_epochs)]
    if mode is Sharing.LOCAL_ONLY:
        return [Stage("local", ("local_branch", "local_head"), local_epochs)]
    stages = [Stage("global", GLOBAL_PARTS, global_epochs),
              Stage("local", LOCAL_PARTS, local_epochs, warm_start=("aggregate",))]
    if mode is Sharing.BIDIRECTIONAL:
        stages.append(Stage("bidirectional", (LISTENING_PART, "aggregate"), both_epochs, collect_local=True,
                            warm_start=(LISTENING_PART,)))
    return stages
