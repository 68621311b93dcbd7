"""What each training stage sees of an image: the whole image, or a coarse-to-fine box.

:class:`StageSampler` is glmed's one builder of training samples: the trainer calls it,
and the MONAI transforms (:class:`glmed.data.transforms.RandStageSampled`,
:class:`~glmed.data.transforms.RandForegroundBoxd`,
:class:`~glmed.data.transforms.RandGlobalLocald`) call it or the two rules it is made of,
:func:`training_box` and :func:`choose_patches`, so a pipeline cannot drift from training.

- Global stages see the whole image downsampled (a coarse-to-fine model's global branch
  also sees ground-truth boxes half the time, because at inference it segments the box
  view too).
- Local and bidirectional stages see patches: of the whole image for plain GLNet; of a
  box derived from the ground truth for coarse-to-fine — relaxed by the same rule as at
  inference (:func:`glmed.geometry.coarse_to_fine_boxes`), then jittered, so the local
  branch learns on the imprecise boxes a coarse prediction gives; some boxes are also
  widened toward the image's edges (:func:`widen_box`), because a poor coarse pass gives
  loose boxes full of skin far from the lesion, which a branch trained on tight boxes
  alone has never seen (measured: it then marks 30-60% of such a box lesion).
- A ``collect_local`` stage needs every patch of the region (they all feed the
  local→global maps); other stages take a random few.

The data layer sits below training: a stage is anything with ``global_only`` and
``collect_local`` (:class:`StageView`), such as :class:`glmed.training.stages.Stage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from glmed.conventions import Box, Size
from glmed.data.normalize import DEFAULT_NORMALIZATION, Normalization
from glmed.data.samples import (
    global_local_sample,
    jittered_foreground_box,
    resize_label,
    widen_box,
)
from glmed.geometry import grow_to_size, patch_grid, patch_size_for
from glmed.io.base import ImageReader
from glmed.io.open import as_reader
from glmed.models.coarse_to_fine import CoarseToFineConfig
from glmed.models.glnet import GLNetConfig

RandomSource = np.random.Generator | np.random.RandomState
"""A numpy random source: the trainer's ``Generator`` or MONAI's ``RandomState``."""


class StageView(Protocol):
    """What the sampler needs to know of a training stage.

    :class:`glmed.training.stages.Stage` satisfies it; so does any object with these two
    read-only attributes, which keeps this module free of the training package.
    """

    @property
    def global_only(self) -> bool:
        """Only the global branch runs: no patches are needed."""
        ...

    @property
    def collect_local(self) -> bool:
        """Every patch of the region is needed (bidirectional sharing's local→global maps)."""
        ...


def _pair(size: int | Size) -> Size:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _label_size(label: ImageReader | np.ndarray) -> Size:
    if isinstance(label, ImageReader):
        return label.size
    shape = np.shape(label)
    return (int(shape[0]), int(shape[1]))


def training_box(
    label: ImageReader | np.ndarray,
    global_size: int | Size,
    patch_size: int | Size,
    target_ratio: float,
    per_component: bool,
    jitter: float,
    rng: np.random.Generator,
    widening: float = 0.0,
) -> Box | None:
    """The coarse-to-fine training box of a label: relaxed, jittered, at least one patch.

    The label is looked at on the global grid (``global_size``), as the coarse mask is at
    inference; the box inference would take from that perfect coarse mask
    (:func:`glmed.data.samples.jittered_foreground_box`: relaxed to ``target_ratio``
    foreground : background, with ``per_component`` one lesion's box picked at random) has
    each edge moved by up to ``jitter`` of its size, so the local branch learns from boxes
    as imprecise as a coarse prediction's; with probability ``widening`` each edge then
    moves a random part of the way to the image's border (:func:`widen_box`), so the
    branch also sees the loose boxes a coarse pass fooled by dark corners or freckles
    gives; it is then grown about its centre to at least one patch (never past the image),
    as the inferer's boxes are.

    Args:
        label: ``H×W`` class map, or a single-channel reader, at full resolution.
        global_size: side, or ``(height, width)``, of the global view.
        patch_size: side, or ``(height, width)``, of a full-resolution patch.
        target_ratio: foreground : background wanted inside the box (the paper's 1.0).
        per_component: a box per connected lesion, one of them drawn, instead of one box.
        jitter: largest move of each edge, as a fraction of the box's height or width.
        rng: draws the four edge moves, then the lesion (always both, in that order),
            then, when ``widening`` is above 0, whether to widen and the four amounts.
        widening: probability that the box is widened toward the image's edges.

    Returns:
        ``(row0, col0, row1, col1)`` in the label's pixels, or None when the label has no
        foreground on the global grid (the caller then uses the whole image).
    """
    size = _label_size(label)
    grid_label = resize_label(label, _pair(global_size))
    if not grid_label.any():
        return None
    box = jittered_foreground_box(grid_label, size, target_ratio, jitter, rng.uniform(-1, 1, 4), per_component,
                                  int(rng.integers(1 << 30)))
    if widening > 0:
        widen, amounts = rng.random() < widening, rng.uniform(0, 1, 4)
        if widen:
            box = widen_box(box, size, amounts)
    return grow_to_size(box, patch_size_for(size, _pair(patch_size)), size)


def choose_patches(count: int, limit: int, rng: RandomSource) -> np.ndarray:
    """Indices of at most ``limit`` of ``count`` patches, drawn without replacement, in grid order.

    Training on a few patches per image bounds a step's memory and time on huge images.
    When all ``count`` fit, they are all taken and nothing is drawn.

    Args:
        count: patches in the grid.
        limit: most patches to keep (at least 1).
        rng: a ``Generator`` (the trainer) or a ``RandomState`` (MONAI's ``self.R``).

    Returns:
        Sorted int64 indices into the grid.
    """
    if limit < 1:
        raise ValueError(f"the patch limit must be at least 1, got {limit}")
    if count <= limit:
        return np.arange(count, dtype=np.int64)
    return np.sort(rng.choice(count, size=limit, replace=False)).astype(np.int64)


@dataclass(frozen=True)
class StageSampler:
    """Builds one training sample of an image for a stage.

    Attributes:
        config: the model's configuration (sizes, classes, and the box rule for coarse-to-fine).
        patches_per_image: patches drawn per image in stages that do not collect all of them.
        box_jitter: largest move of each box edge, as a fraction of the box's size.
        box_widening: how often a coarse-to-fine training box is widened a random part of
            the way to the image's edges (:func:`widen_box`), in every stage.
        box_probability_global: how often a coarse-to-fine global stage sees a box instead
            of the whole image.
        normalization: how pixels become network input (by pixel type, ImageNet statistics,
            by default; ``Normalization(max_value=255)`` for float pixels of 0-255).
    """

    config: GLNetConfig
    patches_per_image: int = 4
    box_jitter: float = 0.15
    box_probability_global: float = 0.5
    normalization: Normalization = DEFAULT_NORMALIZATION
    box_widening: float = 0.0

    def __post_init__(self) -> None:
        if self.patches_per_image < 1:
            raise ValueError(f"patches_per_image must be at least 1, got {self.patches_per_image}")
        if not 0 <= self.box_jitter < 1:
            raise ValueError(f"box_jitter must be in [0, 1), got {self.box_jitter}")
        if not 0 <= self.box_widening <= 1:
            raise ValueError(f"box_widening must be in [0, 1], got {self.box_widening}")

    @property
    def coarse_to_fine(self) -> bool:
        """Whether the model refines a box (its config carries the box rule)."""
        return isinstance(self.config, CoarseToFineConfig)

    def __call__(
        self, stage: StageView, image: ImageReader | np.ndarray, label: ImageReader | np.ndarray,
        rng: np.random.Generator,
    ) -> dict[str, Any]:
        """Build the sample of one image for ``stage``.

        Args:
            stage: the training stage (``global_only``, ``collect_local``).
            image: ``H×W×C`` array or reader.
            label: ``H×W`` class map or single-channel reader.
            rng: every random choice (box or not, box jitter, patches) is drawn from it.

        Returns:
            ``global_image``, ``global_label`` and, unless the stage is global-only,
            ``patches``, ``patch_labels``, ``boxes_normalized`` (see :func:`global_local_sample`).
        """
        image, label = as_reader(image), as_reader(label, name=f"{getattr(image, 'name', 'image')} label")
        config = self.config
        use_box = self.coarse_to_fine and (not stage.global_only or rng.random() < self.box_probability_global)
        region = self.training_box(label, rng) if use_box else None
        if region is not None:
            image, label = image.crop(region), label.crop(region)
        if stage.global_only and not stage.collect_local:
            boxes = np.zeros((0, 4), dtype=np.int64)
            return global_local_sample(image, boxes, label, config.global_size, self.normalization,
                                       num_classes=config.num_classes, with_patches=False)
        boxes = patch_grid(image.size, config.patch_size, config.overlap).boxes
        if not stage.collect_local:
            boxes = boxes[choose_patches(len(boxes), self.patches_per_image, rng)]
        return global_local_sample(image, boxes, label, config.global_size, self.normalization,
                                   num_classes=config.num_classes)

    def training_box(self, label: ImageReader, rng: np.random.Generator) -> Box | None:
        """:func:`training_box` with this sampler's config and jitter.

        Raises:
            TypeError: when the config is not a coarse-to-fine one, which alone has a box rule.
        """
        config = self.config
        if not isinstance(config, CoarseToFineConfig):
            raise TypeError(f"training boxes need a CoarseToFineConfig (the box rule), got {type(config).__name__}")
        return training_box(label, config.global_size, config.patch_size, config.target_ratio,
                            config.per_component, self.box_jitter, rng, self.box_widening)
