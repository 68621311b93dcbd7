"""Pieces several benchmarks share: the generated splits, the recipe's demo model, MONAI baselines, tables.

Each benchmark script puts this folder on ``sys.path`` and imports from here, so it works
run as ``python benchmarks/NAME.py`` and loaded from its path (``importlib``) by the tests
alike. Heavy libraries (torch, MONAI, glmed's models) are imported inside the functions
that need them, so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from glmed.models.glnet import GLNet

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""

ISIC_RECIPE = ROOT / "recipes" / "isic_c2f.py"
"""The ISIC coarse-to-fine recipe, whose ``--demo`` model and training settings benchmarks reuse."""

UNDER = 0.65
"""ISIC 2018's threshold: an image whose Jaccard is below it counts as 0."""


# -- data and the recipe's model ------------------------------------------------------------


def hard_dermoscopy_splits(size: tuple[int, int], counts: Mapping[str, int],
                           data_seed: int = 0) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Generated hard dermoscopy images (:func:`glmed.data.synthetic.make_hard_dermoscopy_image`) per split.

    Split number ``k`` (in ``counts``' order) draws seeds ``data_seed·10⁶ + k·10⁴ + i``, so
    the splits never share an image (up to 10,000 images a split) and a split's images do not
    change when another split's count does.

    Args:
        size: ``(height, width)`` of every image.
        counts: images per split, by name (e.g. ``{"train": 16, "val": 4, "test": 16}``).
        data_seed: selects another set of images.

    Returns:
        Each split's ``(image, mask)`` pairs: ``H×W×3`` uint8 and ``H×W`` uint8 (1 = lesion).
    """
    from glmed.data.synthetic import make_hard_dermoscopy_image

    images = {}
    for offset, (split, count) in enumerate(counts.items()):
        first = data_seed * 1_000_000 + offset * 10_000
        images[split] = [make_hard_dermoscopy_image(size, first + index) for index in range(count)]
    return images


def recipe_settings(epochs: tuple[int, int, int], model: Sequence[tuple[str, Any]] = ()) -> tuple[Any, type[GLNet]]:
    """The ISIC coarse-to-fine recipe's ``--demo`` config and network class.

    Read from ``recipes/isic_c2f.py`` so a benchmark follows the recipe when its demo changes;
    ``epochs`` per stage and the ``model`` changes (``(name, value)`` pairs) replace the demo's values.
    The recipe's own departures from the paper's loss (``RECIPE.defaults``, the Dice term) are
    left out: a benchmark's rows name the loss they train with.
    """
    spec = importlib.util.spec_from_file_location("isic_c2f_recipe", ISIC_RECIPE)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load the recipe {ISIC_RECIPE}")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    config = recipe.RECIPE.config_class(num_classes=len(recipe.RECIPE.class_names), **recipe.DEMO)
    return replace(config, epochs=tuple(epochs), **dict(model)).check(), recipe.RECIPE.model_class


def transfer(weights: Mapping[str, Any], config: Any, kind: str, sharing: str) -> Any:
    """A GLNet (``kind`` "glnet") or coarse-to-fine GLNet with ``sharing``, holding ``weights``.

    Bidirectional weights load whole into either class; a G→L model leaves out the global
    branch's local→global convolutions (it has none), and nothing else may be missing or left over.
    """
    import glmed

    cls = glmed.CoarseToFineGLNet if kind == "c2f" else glmed.GLNet
    values = replace(config, sharing=sharing).to_dict()
    model = cls.from_config({key: value for key, value in values.items() if key != "trained_image_size"})
    missing, unexpected = model.load_state_dict(dict(weights), strict=False)
    dropped = [key for key in unexpected if key.startswith("global_branch.") and ".partner_conv." in key]
    if missing or len(dropped) != len(unexpected):
        raise ValueError(f"the weights do not fit a {sharing} {cls.__name__}: missing {missing[:3]}, "
                         f"unexpected {sorted(set(unexpected) - set(dropped))[:3]}")
    return model.eval()


# -- MONAI baselines ----------------------------------------------------------------------


def pad_to_multiple(x: Any, multiple: int = 32) -> tuple[Any, tuple[int, int, int, int]]:
    """``x`` (N×C×H×W) reflect-padded so both sides divide by ``multiple``; returns it and the padding."""
    import torch.nn.functional as F

    height, width = x.shape[-2:]
    extra_h, extra_w = -height % multiple, -width % multiple
    pad = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
    if not any(pad):
        return x, pad
    return F.pad(x, pad, mode="reflect"), pad


def flexible_unet(backbone: str, classes: int = 2) -> Any:
    """MONAI's FlexibleUNet with a ResNet encoder, random weights (``pretrained=False``: nothing is downloaded)."""
    from monai.networks.nets import FlexibleUNet

    return FlexibleUNet(in_channels=3, out_channels=classes, backbone=backbone, pretrained=False)


def flexible_unet_logits(net: Any, x: Any) -> Any:
    """FlexibleUNet on windows of any size: padded to a multiple of 32, the output cropped back."""
    padded, (left, right, top, bottom) = pad_to_multiple(x)
    out = net(padded)
    return out[..., top : out.shape[-2] - bottom, left : out.shape[-1] - right]


def sliding_window_mask(logits_of: Callable[[Any], Any], image: np.ndarray, patch_size: int, overlap: int,
                        batch_size: int = 1, device: Any = "cpu") -> tuple[np.ndarray, int]:
    """MONAI's ``sliding_window_inference`` of ``logits_of`` over a whole image; its mask and window count.

    Args:
        logits_of: a batch of ``N×C×p×p`` windows to their ``N×K×p×p`` logits.
        image: ``H×W×C`` pixels (normalised as glmed's networks are trained, ImageNet statistics).
        patch_size: window side, pixels.
        overlap: pixels shared by neighbouring windows (MONAI takes it as a fraction of the side).
        batch_size: windows per forward pass.
        device: where the windows run; the stitched logits stay on the CPU.

    Returns:
        ``H×W`` uint8 class indices and the number of windows run.
    """
    import torch
    from monai.inferers import sliding_window_inference

    from glmed.data.normalize import to_model_input

    windows = []

    def predictor(tiles: torch.Tensor) -> torch.Tensor:
        windows.append(len(tiles))
        return logits_of(tiles)

    with torch.inference_mode():
        logits = sliding_window_inference(
            to_model_input(image)[None], roi_size=(patch_size,) * 2, sw_batch_size=batch_size, predictor=predictor,
            overlap=overlap / patch_size, mode="constant", sw_device=torch.device(device),
            device=torch.device("cpu"))
        mask = logits[0].argmax(0).numpy().astype(np.uint8)
    return mask, sum(windows)


# -- tables -------------------------------------------------------------------------------


def sample_std(values: pd.Series) -> float:
    """Sample standard deviation; 0 for a single value (one seed has no spread)."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def markdown(table: pd.DataFrame) -> str:
    """``table`` as a Markdown table (no extra dependency)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
