"""glmed: memory-efficient segmentation of ultra-high-resolution medical images.

The public API is re-exported here and imported lazily, so ``import glmed`` stays fast
and does not touch torch, MONAI, OpenSlide or tifffile until a feature needs them.
"""

from __future__ import annotations

from glmed._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "GLNet": "glmed.models.glnet",
    "GLNetConfig": "glmed.models.glnet",
    "Sharing": "glmed.models.glnet",
    "CoarseToFineGLNet": "glmed.models.coarse_to_fine",
    "GlobalLocalInferer": "glmed.inference.inferer",
    "SegmentationResult": "glmed.inference.result",
    "predict": "glmed.inference.inferer",
    "load_model": "glmed.models.checkpoint",
    "save_model": "glmed.models.checkpoint",
    "load_checkpoints": "glmed.training.best_checkpoints",
    "fit": "glmed.training.fit",
    "paper_stages": "glmed.training.stages",
    "Stage": "glmed.training.stages",
    "predict_to_tiff": "glmed.inference.slide",
    "open_image": "glmed.io",
    "score_submission": "glmed.metrics.isic",
    "show_result": "glmed.plotting",
    "plot_scores": "glmed.plotting",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
