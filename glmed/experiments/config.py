"""The recipes' configuration: one validated dataclass, the paper's defaults, every value a CLI flag.

Each field of :class:`RecipeConfig` (and of :class:`CoarseToFineRecipeConfig`) is an option
``--field-name``; :func:`add_config_arguments` builds them from the fields' metadata, so a
new field is a new flag with no other code. Values are checked together by
:meth:`RecipeConfig.problems` before any work starts, and a run records its config as
``config.json`` (:meth:`RecipeConfig.to_json`) so ``--resume`` continues with exactly it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from glmed.data.augment import Augmentation
from glmed.models.coarse_to_fine import CoarseToFineConfig
from glmed.models.glnet import GLNetConfig, setting


class ConfigError(ValueError):
    """Config values out of range; lists every problem with the option that sets it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {problem}" for problem in self.problems))


@dataclass(frozen=True)
class RecipeConfig(GLNetConfig):
    """Everything a recipe run depends on; defaults are the paper's (ResNet50-FPN, 508 px, ...).

    The model's settings are inherited from :class:`~glmed.models.glnet.GLNetConfig` (listed
    and range-checked there once); :meth:`model_config` extracts them for the network.
    """

    model_config_class: ClassVar[type[GLNetConfig]] = GLNetConfig
    """The network's configuration class; its fields are this config's model settings."""

    # data
    data: str | None = setting(None, "dataset root in the dataset's own layout", metavar="ROOT")
    manifest: str | None = setting(None, "CSV of image_id,image_path,label_path,split to use instead of "
                                         "building a split", metavar="CSV")
    demo: bool = setting(False, "generate a small synthetic dataset of this kind into RUN_DIR/data and "
                                "train a small model on the CPU in a few minutes", flag=True)
    images: int = setting(30, "with --demo: how many images to generate")
    image_size: tuple[int, int] = setting((384, 512), "with --demo: smallest and largest image height",
                                          nargs=2, type=int, metavar=("MIN", "MAX"))
    split: tuple[int, int, int] | None = setting(None, "train/val/test counts or proportions (default: the "
                                                       "paper's for the dataset)", nargs=3, type=int,
                                                 metavar=("TRAIN", "VAL", "TEST"))
    # model: the fields of GLNetConfig (backbone, sharing, fpn_channels, global_size, patch_size, overlap)
    pretrained_backbone: str | None = setting(None, "ImageNet ResNet state dict you downloaded (nothing is "
                                                    "downloaded for you)", metavar="FILE")
    # loss
    gamma: float = setting(6.0, "focal loss gamma (the original code used 3)")
    main_weight: float = setting(1.0, "weight of the main (aggregated) output's loss")
    local_weight: float = setting(1.0, "weight of the local branch's auxiliary loss")
    global_weight: float = setting(1.0, "weight of the global branch's auxiliary loss")
    fmreg_weight: float = setting(0.15, "lambda of the feature-map regulariser")
    boundary_weight: float = setting(0.0, "weight of a training-only loss on a band around the label's edges "
                                          "(0: off, the paper's objective)")
    boundary_width: int = setting(3, "half-width in pixels of that band (patch pixels; downsampled pixels in the "
                                     "global stage)")
    dice_weight: float = setting(0.0, "weight of a soft Dice term on the main output (the global branch's in the "
                                      "global stage; 0: off, the paper's objective)")
    # optimisation
    global_lr: float = setting(1e-4, "Adam learning rate of the global parts")
    local_lr: float = setting(2e-5, "Adam learning rate of the local parts and aggregation head")
    listening_lr: float | None = setting(None, "Adam learning rate of the local→global convolutions in the "
                                               "bidirectional stage (default: a tenth of global_lr)", type=float)
    batch_size: int = setting(6, "images per optimisation step (per process under torchrun)")
    patches_per_image: int = setting(4, "patches drawn per image in the local stage")
    patches_per_step: int = setting(6, "patches given gradients per step in the bidirectional stage")
    epochs: tuple[int, ...] = setting((20, 20, 5), "epochs of the global, local and bidirectional stages; one "
                                                   "number sets all three", nargs="+", type=int, metavar="N")
    augment: str | None = setting(None, "training augmentation preset: dermoscopy, histology, aerial or none "
                                        "(default: the dataset's own; see glmed.data.augment.Augmentation.preset)",
                                  choices=list(Augmentation.PRESETS))
    validate_every: int = setting(1, "validate every N epochs of a stage (a stage's last epoch always is); the "
                                     "global stage validates the global branch's own mask")
    keep_best: int = setting(1, "keep the weights of the N best validated epochs in checkpoints/top/ (listed in "
                                "checkpoints/top.json), for an ensemble: glmed predict --best N RUN_DIR ..., or "
                                "glmed.load_checkpoints(RUN_DIR, best=N); 1 keeps best.pt alone")
    # inference and the run
    finish: str | None = setting(None, "finishing of the test masks: lesion (keep the largest region, fill its "
                                       "holes: what an ISIC lesion is) or none (default: the dataset's own, lesion "
                                       "for ISIC, none otherwise)", choices=["lesion", "none"])
    predict_batch_size: int = setting(4, "patches per forward pass at inference")
    workers: int | None = setting(None, "processes that load images and build training samples (default: the "
                                        "machine's cores minus one, none below 4 cores; 0 builds them in the "
                                        "training process)",
                                  type=int, metavar="N")
    seed: int = setting(0, "seed of the split, the initial weights and every random draw")
    device: str = setting("auto", "cpu, cuda, cuda:N, or auto (CUDA when available)")
    amp: str = setting("off", "mixed precision: off (float32), bf16 (bfloat16 autocast, CPU or GPU) or fp16 "
                              "(float16 autocast with gradient scaling, GPU only)", choices=["off", "bf16", "fp16"])
    channels_last: bool = setting(False, "keep the weights and image batches in channels-last memory format "
                                         "(faster convolutions on recent GPUs)", flag=True)

    def __post_init__(self) -> None:
        # Unlike a model config, a recipe config is not refused on construction: check() lists
        # every problem at once, each with the option that sets it.
        if len(self.epochs) == 1:  # one number sets all three stages
            object.__setattr__(self, "epochs", tuple(self.epochs) * 3)
        for name in ("image_size", "split", "epochs", "trained_image_size"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))

    @property
    def stage_epochs(self) -> tuple[int, int, int]:
        """Epochs of the global, local and bidirectional stages."""
        return tuple(self.epochs)  # type: ignore[return-value]

    def problems(self) -> list[str]:
        """Every out-of-range value, each naming its option, the value and what is allowed."""
        found: list[str] = [f"--{name.replace('_', '-')} {_shown(getattr(self, name))}: {rule}"
                             for name, rule in self.model_problems()]

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                found.append(f"--{name.replace('_', '-')} {_shown(getattr(self, name))}: {rule}")

        need(self.demo or self.data is not None or self.manifest is not None, "data",
             "give --data ROOT (or --manifest CSV), or --demo for generated data")
        need(not (self.demo and self.data is not None), "data", "--data and --demo exclude each other")
        need(self.images >= 3, "images", "at least 3 (train, validation and test need one each)")
        need(32 <= self.image_size[0] <= self.image_size[1], "image_size", "MIN >= 32 and MIN <= MAX")
        need(self.split is None or (len(self.split) == 3 and min(self.split) > 0), "split",
             "three counts > 0: train, validation and test each need images")
        need(self.gamma >= 0, "gamma", ">= 0")
        need(self.boundary_width >= 1, "boundary_width", "at least 1 pixel")
        for name in ("main_weight", "local_weight", "global_weight", "fmreg_weight", "boundary_weight", "dice_weight"):
            need(getattr(self, name) >= 0, name, ">= 0")
        for name in ("global_lr", "local_lr"):
            need(0 < getattr(self, name) < 1, name, "in (0, 1)")
        need(self.listening_lr is None or 0 < self.listening_lr < 1, "listening_lr", "in (0, 1)")
        need(self.workers is None or self.workers >= 0, "workers", "0 or more")
        need(self.validate_every >= 1, "validate_every", "at least 1")
        need(self.keep_best >= 1, "keep_best", "at least 1")
        need(self.finish in (None, "lesion", "none"), "finish", "lesion or none")
        need(self.finish != "lesion" or self.num_classes == 2, "finish",
             f"lesion finishing keeps one region of a two-class mask; this dataset has {self.num_classes} classes")
        for name in ("batch_size", "patches_per_image", "patches_per_step", "predict_batch_size"):
            need(getattr(self, name) >= 1, name, "at least 1")
        need(len(self.epochs) == 3 and min(self.epochs) >= 0 and sum(self.epochs) > 0, "epochs",
             "one or three counts >= 0, not all 0")
        need(self.pretrained_backbone is None or Path(self.pretrained_backbone).is_file(), "pretrained_backbone",
             "no such file; give the path of the ImageNet ResNet state dict you downloaded")
        need(self.manifest is None or Path(self.manifest).is_file(), "manifest", "no such file")
        need(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"), "device",
             "cpu, cuda, cuda:N or auto")
        if self.device != "auto" and self.device.split(":")[0] in ("cpu", "cuda", "mps"):
            from glmed.models.checkpoint import device_problem

            problem = device_problem(self.device)
            need(problem is None, "device", str(problem))  # e.g. cuda on a machine without it
        need(self.amp in ("off", "bf16", "fp16"), "amp", "off, bf16 or fp16")
        if self.amp == "fp16":
            import torch

            cuda = self.device.startswith("cuda") or (self.device == "auto" and torch.cuda.is_available())
            need(cuda, "amp", "fp16 needs a CUDA GPU (--device cuda); use --amp bf16 on the CPU")
        return found

    def model_config(self) -> GLNetConfig:
        """The network's configuration: this config's values of :attr:`model_config_class`'s fields."""
        names = [item.name for item in fields(self.model_config_class)]
        return self.model_config_class(**{name: getattr(self, name) for name in names})

    def sampler_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~glmed.data.stage_samples.StageSampler` set by this config."""
        return {"patches_per_image": self.patches_per_image}

    def check(self) -> RecipeConfig:
        """Raise :class:`ConfigError` listing every problem; returns ``self`` when there is none."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self

    def to_json(self) -> str:
        """Every option as indented JSON: the run folder's ``config.json``, read back by :meth:`from_json`."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RecipeConfig:
        """The config a run saved; unknown keys (from another recipe or version) are refused."""
        values = json.loads(text)
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError([f"config.json has options {sorted(unknown)} that {cls.__name__} does not know"])
        return cls(**values)


@dataclass(frozen=True)
class CoarseToFineRecipeConfig(CoarseToFineConfig, RecipeConfig):
    """:class:`RecipeConfig` plus the coarse-to-fine box rule and its training jitter.

    The box rule comes from :class:`~glmed.models.coarse_to_fine.CoarseToFineConfig`.
    """

    model_config_class: ClassVar[type[GLNetConfig]] = CoarseToFineConfig
    box_jitter: float = setting(0.15, "largest move of a training box's edge, as a fraction of its size")
    box_probability_global: float = setting(0.5, "how often the global stage sees a box instead of the "
                                                 "whole image")
    box_widening: float = setting(0.5, "how often a training box is widened a random part of the way to "
                                       "the image's edges, as a poor coarse pass's boxes are")

    def sampler_options(self) -> dict[str, Any]:
        """The sampler options plus the box rules: jitter, widening, how often the global stage uses one."""
        return {**super().sampler_options(), "box_jitter": self.box_jitter,
                "box_probability_global": self.box_probability_global, "box_widening": self.box_widening}

    def problems(self) -> list[str]:
        """The plain recipe's problems plus out-of-range box jitter and box probability."""
        found = super().problems()
        if not 0 <= self.box_jitter < 1:
            found.append(f"--box-jitter {self.box_jitter}: must be in [0, 1)")
        if not 0 <= self.box_probability_global <= 1:
            found.append(f"--box-probability-global {self.box_probability_global}: must be in [0, 1]")
        if not 0 <= self.box_widening <= 1:
            found.append(f"--box-widening {self.box_widening}: must be in [0, 1]")
        return found


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type[RecipeConfig],
                         demo_defaults: Mapping[str, Any] | None = None,
                         recipe_defaults: Mapping[str, Any] | None = None) -> None:
    """One ``--flag`` per field of ``config_class``.

    Unset flags stay out of the parsed namespace, so :func:`config_from_arguments` can tell
    a value given from a default. Each help text ends with the default, and, where
    ``demo_defaults`` (the recipe's ``--demo`` values) changes it, the demo's too:
    ``(default: 508; with --demo: 192)``; an option that only matters with ``--demo`` shows
    the demo's value alone. Where ``recipe_defaults`` (the recipe's own, for every run)
    departs from the paper's, the help says so: ``(default: 1.0, this recipe's; the paper's: 0.0)``.
    """
    demo_defaults = demo_defaults or {}
    recipe_defaults = recipe_defaults or {}
    for item in fields(config_class):
        meta = dict(item.metadata)
        if not meta.pop("command_line", True):  # set by the recipe, not by the user (num_classes)
            continue
        flag = f"--{item.name.replace('_', '-')}"
        options: dict[str, Any] = {"dest": item.name, "default": argparse.SUPPRESS}
        if meta.pop("flag", False):
            parser.add_argument(flag, action="store_true", help=meta["help"], **options)
            continue
        default = item.default if item.default is not MISSING else None
        meta.setdefault("type", type(default) if isinstance(default, (int, float, str)) else str)
        shown = [] if "(default:" in meta["help"] else [f"default: {_shown(default)}"]  # or the help says it
        if item.name in recipe_defaults:
            paper, default = default, recipe_defaults[item.name]
            shown = [f"default: {_shown(default)}, this recipe's; the paper's: {_shown(paper)}"]
        if item.name in demo_defaults:
            demo = demo_defaults[item.name]
            if meta["help"].startswith("with --demo"):  # the paper's default never applies
                shown = [f"default: {_shown(demo)}"]
            elif _shown(demo) != _shown(default):
                shown.append(f"with --demo: {_shown(demo)}")
        meta["help"] = (f"{meta['help']} ({'; '.join(shown)})" if shown else meta["help"]).replace("%", "%%")
        parser.add_argument(flag, **options, **meta)


def given_values(args: argparse.Namespace, config_class: type[RecipeConfig]) -> dict[str, Any]:
    """The config values set on the command line (flags left out are not included)."""
    names = {item.name for item in fields(config_class)}
    return {name: tuple(value) if isinstance(value, list) else value
            for name, value in vars(args).items() if name in names}


def config_from_arguments(
    config_class: type[RecipeConfig], given: Mapping[str, Any], demo_defaults: Mapping[str, Any],
    fixed: Mapping[str, Any] | None = None, recipe_defaults: Mapping[str, Any] | None = None,
) -> RecipeConfig:
    """The paper's defaults, or the demo's with ``demo=True``, overridden by ``given``; checked.

    ``fixed`` holds values the recipe sets itself (``num_classes`` from its class names);
    ``recipe_defaults`` the recipe's own departures from the paper's defaults, which the
    demo's values and ``given`` override.
    """
    fixed = dict(fixed or {})
    base = replace(config_class(**fixed), **dict(recipe_defaults or {}))
    if given.get("demo"):
        base = replace(base, **demo_defaults)
    return replace(base, **given).check()


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
