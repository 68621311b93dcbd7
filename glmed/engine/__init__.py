"""Old import paths of glmed 0.1 (``glmed.engine.*``), kept for one release.

``glmed.engine`` was split by concern into :mod:`glmed.inference`, :mod:`glmed.training`,
:mod:`glmed.experiments` and :mod:`glmed.cli`. Importing an old module here gives a module
holding the public names of its new home(s) and a :class:`DeprecationWarning` naming them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence

MOVED: dict[str, tuple[str, ...]] = {
    "inferer": ("glmed.inference.inferer", "glmed.io.open"),
    "stitching": ("glmed.inference.merging",),
    "slide": ("glmed.inference.slide",),
    "devices": ("glmed.models.placement",),
    "training": ("glmed.training.stages", "glmed.training.trainer"),
    "sampling": ("glmed.data.stage_samples",),
    "fit": ("glmed.training.fit", "glmed.training.evaluate"),
    "runner": ("glmed.training.runner",),
    "checkpoint": ("glmed.models.checkpoint",),
    "distributed": ("glmed.training.distributed",),
    "validation": ("glmed.metrics.validation", "glmed.training.evaluate"),
    "recipe_support": ("glmed.experiments.recipe", "glmed.metrics.memory"),
    "recipe_config": ("glmed.experiments.config",),
    "outputs": ("glmed.experiments.outputs",),
    "predict_cli": ("glmed.cli.predict",),
    "demo": ("glmed.cli.demo",),
}
"""Old module name under ``glmed.engine`` → the modules that now hold its names."""


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``glmed.engine.<old>`` and builds it from the new modules' public names."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: object = None):
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return types.ModuleType(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        targets = MOVED[module.__name__.rpartition(".")[2]]
        warnings.warn(f"{module.__name__} moved to {' and '.join(targets)}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        for target in targets:
            new = importlib.import_module(target)
            module.__dict__.update({k: v for k, v in vars(new).items() if not k.startswith("__")})


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
