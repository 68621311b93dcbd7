"""DeepGlobe land cover with the standard GLNet (the paper's Table 2), end to end.

    python recipes/deepglobe_glnet.py --data DEEPGLOBE_ROOT --out RUN_DIR --sharing bidirectional
    python recipes/deepglobe_glnet.py --demo --out runs/deepglobe_demo
    python recipes/deepglobe_glnet.py --resume --out RUN_DIR

``--sharing`` picks the Table 2 row: ``local_only``, ``global_only``, ``none`` (aggregation and
feature-map regulariser), ``g2l_shallow``, ``g2l``, ``bidirectional`` (G⇄L). Seven classes;
``unknown`` is ignored by the loss and the metric (mean IoU over the other six). Test
predictions are written as colour-coded ``RUN_DIR/predictions/<id>_mask.png``. See docs/recipes.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from glmed.data.synthetic import write_deepglobe_dataset
from glmed.experiments import recipe as recipe_support
from glmed.experiments.config import RecipeConfig
from glmed.experiments.outputs import ClassMapPredictions
from glmed.io.labels import DEEPGLOBE_CLASSES, DEEPGLOBE_PALETTE
from glmed.metrics.validation import MeanIoUMetric
from glmed.models.glnet import GLNet

DEMO = dict(
    demo=True, images=16, image_size=(384, 448), split=(10, 3, 3), backbone="resnet18", fpn_channels=64,
    global_size=192, patch_size=192, overlap=24, global_lr=1e-3, local_lr=5e-4, batch_size=2,
    patches_per_image=3, patches_per_step=4, epochs=(6, 6, 2),
)
"""``--demo``: a small network on generated land-cover images, a few minutes on a 2-core CPU."""

METRIC = MeanIoUMetric(DEEPGLOBE_CLASSES, ignore_index=DEEPGLOBE_CLASSES.index("unknown"))


def write_demo(root: Path, config: RecipeConfig) -> Path:
    """Synthetic land-cover images in the DeepGlobe layout."""
    return write_deepglobe_dataset(root, config.images, size_range=config.image_size, seed=config.seed)


RECIPE = recipe_support.Recipe(
    name="deepglobe_glnet",
    description="DeepGlobe land cover with GLNet: train, validate, predict the test split, mean IoU",
    dataset="deepglobe",
    class_names=DEEPGLOBE_CLASSES,
    label_kind="deepglobe",
    model_class=GLNet,
    config_class=RecipeConfig,
    demo_defaults=DEMO,
    write_demo=write_demo,
    augmentation="aerial",
    metric=METRIC,
    output=ClassMapPredictions(METRIC, "deepglobe", palette=DEEPGLOBE_PALETTE, suffix="_mask"),
    ignore_index=DEEPGLOBE_CLASSES.index("unknown"),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the recipe with command-line arguments ``argv``; returns the exit status."""
    return recipe_support.main(RECIPE, argv)


if __name__ == "__main__":
    sys.exit(main())
