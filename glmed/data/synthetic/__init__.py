"""Synthetic ultra-high-resolution images: glmed's built-in sample data.

Dermoscopy-like images (skin-tone texture, vignetting, hairs, lesions with irregular,
finely detailed borders and blotchy internal colour, mostly under 20% foreground as in
ISIC 2018; :mod:`.dermoscopy`), harder ones for benchmarks (freckles, hairs and dark
corners that fool a patch, pale texture inside the lesion that downsampling removes;
:mod:`.hard_dermoscopy`), land-cover-like images with DeepGlobe's seven classes, aerial
images with buildings (Inria; :mod:`.aerial`), whole-slide-like images of H&E tissue
on glass with tumour-like regions (:mod:`.histology`), and whole-slide files (Aperio SVS
and generic tiled TIFF pyramids of any size, written tile by tile; :mod:`.slides`). The
writers lay them out exactly as the real datasets are laid out, so the same loaders,
recipes and scorers run on them; nothing is downloaded.

Everything is deterministic by seed. Smooth fields are drawn on coarse grids and
upsampled, so a 6748×4499 image takes seconds and a few full-size float32 arrays.
"""

from __future__ import annotations

from glmed.data.synthetic.aerial import (
    CLASS_DICT_NAMES,
    LAND_COLOURS,
    LAND_PRIORS,
    LAND_TEXTURE,
    make_aerial_image,
    make_landcover_image,
    write_deepglobe_dataset,
    write_inria_dataset,
)
from glmed.data.synthetic.dermoscopy import (
    LESION_COLOURS,
    SKIN_TONES,
    make_dermoscopy_image,
    write_isic_dataset,
)
from glmed.data.synthetic.hard_dermoscopy import make_hard_dermoscopy_image
from glmed.data.synthetic.histology import make_slide_image
from glmed.data.synthetic.slides import SyntheticSlide, TissueScene, make_tissue_scene, write_synthetic_slide

__all__ = [
    "CLASS_DICT_NAMES",
    "LAND_COLOURS",
    "LAND_PRIORS",
    "LAND_TEXTURE",
    "LESION_COLOURS",
    "SKIN_TONES",
    "SyntheticSlide",
    "TissueScene",
    "make_aerial_image",
    "make_dermoscopy_image",
    "make_hard_dermoscopy_image",
    "make_landcover_image",
    "make_slide_image",
    "make_tissue_scene",
    "write_deepglobe_dataset",
    "write_inria_dataset",
    "write_isic_dataset",
    "write_synthetic_slide",
]
