"""MONAI dictionary transforms, dataset layouts, the training sample builder and synthetic data.

:class:`StageSampler` (``glmed.data.stage_samples``) is the one builder of training
samples; the MONAI transforms wrap it (:class:`RandStageSampled`) or the rules it is made
of (:func:`training_box`, :func:`choose_patches`), so a MONAI pipeline sees what the
trainer sees. Names are imported lazily, so ``import glmed.data.layouts`` does not load
MONAI; the transforms load it when first used. See ``docs/data.md``.
"""

from __future__ import annotations

from glmed._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("IMAGENET_MEAN", "IMAGENET_STD", "Normalization", "to_model_input"), "glmed.data.normalize"),
    **dict.fromkeys(
        ("PatchBatch", "check_class_map", "collate_global_local", "global_local_sample", "iter_patch_batches",
         "jitter_box", "read_patches", "resize_label", "tile_box"),
        "glmed.data.samples",
    ),
    **dict.fromkeys(("StageSampler", "StageView", "choose_patches", "training_box"), "glmed.data.stage_samples"),
    **dict.fromkeys(("AugmentDraw", "Augmentation", "AugmentedReader", "ColourChange"), "glmed.data.augment"),
    **dict.fromkeys(
        ("CropBoxd", "GlobalLocal", "GlobalLocald", "LabelToIndex", "LabelToIndexd", "RandForegroundBox",
         "RandForegroundBoxd", "RandGlobalLocald", "RandStageSampled", "ReadImaged", "seed_from"),
        "glmed.data.transforms",
    ),
    **dict.fromkeys(
        ("make_aerial_image", "make_dermoscopy_image", "make_hard_dermoscopy_image", "make_landcover_image",
         "make_slide_image", "make_tissue_scene",
         "write_deepglobe_dataset", "write_inria_dataset", "write_isic_dataset", "write_synthetic_slide"),
        "glmed.data.synthetic",
    ),
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 -- built from the export table, so the two cannot disagree


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
