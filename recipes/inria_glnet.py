"""Inria Aerial building segmentation with the standard GLNet, end to end.

    python recipes/inria_glnet.py --data INRIA_ROOT --out RUN_DIR --sharing bidirectional
    python recipes/inria_glnet.py --demo --out runs/inria_demo
    python recipes/inria_glnet.py --resume --out RUN_DIR

``--sharing`` picks the paper's Table 2 row (``local_only`` ... ``bidirectional``). Two classes
(background, building), scored by mean IoU over both; test predictions are written as 0/255
``RUN_DIR/predictions/<id>.png``. See docs/recipes.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from glmed.data.synthetic import write_inria_dataset
from glmed.experiments import recipe as recipe_support
from glmed.experiments.config import RecipeConfig
from glmed.experiments.outputs import ClassMapPredictions
from glmed.metrics.validation import MeanIoUMetric
from glmed.models.glnet import GLNet

DEMO = dict(
    demo=True, images=12, image_size=(960, 1024), split=(8, 2, 2), backbone="resnet18", fpn_channels=64,
    global_size=192, patch_size=192, overlap=24, global_lr=1e-3, local_lr=1e-3, batch_size=2,
    patches_per_image=4, patches_per_step=4, epochs=(4, 10, 2), gamma=2.0,
)
"""``--demo``: a small network on generated aerial images, a few minutes on a 2-core CPU.

The generated buildings are small (about 1% of the image's side, 10% of its pixels), so the
images are large enough for a 192-pixel patch to show them, and the focal loss's γ is 2: with
the paper's 6 and a few dozen steps, the model kept predicting background everywhere.
"""

METRIC = MeanIoUMetric(("background", "building"))


def write_demo(root: Path, config: RecipeConfig) -> Path:
    """Synthetic aerial images in the Inria Aerial layout."""
    return write_inria_dataset(root, config.images, size_range=config.image_size, seed=config.seed)


RECIPE = recipe_support.Recipe(
    name="inria_glnet",
    description="Inria Aerial buildings with GLNet: train, validate, predict the test split, mean IoU",
    dataset="inria",
    class_names=METRIC.class_names,
    label_kind="binary",
    model_class=GLNet,
    config_class=RecipeConfig,
    demo_defaults=DEMO,
    write_demo=write_demo,
    augmentation="aerial",
    metric=METRIC,
    output=ClassMapPredictions(METRIC, "binary"),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the recipe with command-line arguments ``argv``; returns the exit status."""
    return recipe_support.main(RECIPE, argv)


if __name__ == "__main__":
    sys.exit(main())
