"""What each training stage sees of an image: the whole image, or a coarse-to-fine box.

- Global stages see the whole image downsampled (a coarse-to-fine model's global branch
  also sees ground-truth boxes half the time, because at inference it segments the box
  view too).
- Local and bidirectional stages see patches: of the whole image for plain GLNet; of a
  box derived from the ground truth for coarse-to-fine — relaxed by the same rule as at
  inference (:func:`glmed.geometry.coarse_to_fine_boxes`), then jittered, so the local
  branch learns on the imprecise boxes a coarse prediction gives.
- A ``collect_local`` stage needs every patch of the region (they all feed the
  local→global maps); other stages take a random few.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import numpy as np

from glmed.io.open import as_reader
from glmed.data.samples import global_local_sample, jittered_foreground_box, resize_label
from glmed.training.stages import Stage
from glmed.geometry import grow_to_size, patch_grid, patch_size_for
from glmed.io.base import ImageReader
from glmed.io.region import RegionReader
from glmed.models.coarse_to_fine import CoarseToFineConfig
from glmed.models.glnet import GLNetConfig
from glmed.conventions import Box


@dataclass(frozen=True)
class StageSampler:
    """Builds one training sample of an image for a stage.

    Attributes:
        config: the model's configuration (sizes, classes, and the box rule for coarse-to-fine).
        patches_per_image: patches drawn per image in stages that do not collect all of them.
        box_jitter: largest move of each box edge, as a fraction of the box's size.
        box_probability_global: how often a coarse-to-fine global stage sees a box instead
            of the whole image.
    """

    config: GLNetConfig
    patches_per_image: int = 4
    box_jitter: float = 0.15
    box_probability_global: float = 0.5

    def __post_init__(self) -> None:
        if self.patches_per_image < 1:
            raise ValueError(f"patches_per_image must be at least 1, got {self.patches_per_image}")
        if not 0 <= self.box_jitter < 1:
            raise ValueError(f"box_jitter must be in [0, 1), got {self.box_jitter}")

    @property
    def coarse_to_fine(self) -> bool:
        return isinstance(self.config, CoarseToFineConfig)

    def __call__(
        self, stage: Stage, image: ImageReader | np.ndarray, label: ImageReader | np.ndarray, rng: np.random.Generator
    ) -> Dict[str, Any]:
        """The sample: ``global_image``, ``global_label`` and, unless the stage is global-only,
        ``patches``, ``patch_labels``, ``boxes_normalized`` (see :func:`global_local_sample`)."""
        image, label = as_reader(image), as_reader(label, name=f"{getattr(image, 'name', 'image')} label")
        config = self.config
        use_box = self.coarse_to_fine and (not stage.global_only or rng.random() < self.box_probability_global)
        region = self.training_box(label, rng) if use_box else None
        if region is not None:
            image, label = RegionReader(image, region), RegionReader(label, region)
        if stage.global_only and not stage.collect_local:
            boxes = np.zeros((0, 4), dtype=np.int64)
            return global_local_sample(image, boxes, label, config.global_size, num_classes=config.num_classes,
                                       with_patches=False)
        grid = patch_grid(image.size, config.patch_size, config.overlap)
        boxes = grid.boxes
        if not stage.collect_local and len(boxes) > self.patches_per_image:
            boxes = boxes[np.sort(rng.choice(len(boxes), size=self.patches_per_image, replace=False))]
        return global_local_sample(image, boxes, label, config.global_size, num_classes=config.num_classes)

    def training_box(self, label: ImageReader, rng: np.random.Generator) -> Box | None:
        """A jittered, relaxed ground-truth box of at least one patch; None without foreground.

        The label is looked at on the global grid, as the coarse mask is at inference.
        """
        config = self.config
        grid_label = resize_label(label, (config.global_size, config.global_size))
        if not grid_label.any():
            return None
        box = jittered_foreground_box(grid_label, label.size, config.target_ratio, self.box_jitter,
                                      rng.uniform(-1, 1, 4), config.per_component, int(rng.integers(1 << 30)))
        return grow_to_size(box, patch_size_for(label.size, (config.patch_size, config.patch_size)), label.size)
