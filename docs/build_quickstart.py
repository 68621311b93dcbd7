"""Build and execute docs/quickstart.ipynb: glmed from a notebook, on generated data, in a few minutes on a CPU.

    pip install -c constraints.txt -e ".[all]" nbformat nbclient ipykernel
    python docs/build_quickstart.py

The notebook is written (atomically) with its outputs, so it reads as a worked example on GitHub.
``tests/test_quickstart.py`` runs the same code cells without Jupyter, so the notebook cannot rot.
"""

from __future__ import annotations

import sys
from pathlib import Path

NOTEBOOK = Path(__file__).with_name("quickstart.ipynb")

CELLS = [
    ("markdown", """\
# glmed quickstart

Train a small coarse-to-fine GLNet on generated dermoscopy-like images, segment a held-out image,
score a submission with the ISIC 2018 Task 1 metric, then train a second small network on generated
slide-like images (H&E tissue on glass) and stream a slide through whole-slide inference. Everything
uses the top-level `glmed` API and runs on a 2-core CPU in about three minutes; real work uses
`recipes/isic_c2f.py` and ResNet50 with ImageNet weights from a file you downloaded
(`pretrained_backbone=PATH`)."""),
    ("code", """\
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import glmed
from glmed.data.synthetic import make_dermoscopy_image, make_slide_image
from glmed.io.writers import write_mask_png, write_pyramidal_tiff

torch.manual_seed(0)
work = Path(tempfile.mkdtemp(prefix="glmed-quickstart-"))
images = [make_dermoscopy_image((192, 256), seed) for seed in range(28)]   # (RGB image, lesion mask)
train, test = images[:24], images[24:]
print(f"{len(train)} training and {len(test)} test images of {train[0][0].shape}")"""),
    ("markdown", """\
## A coarse-to-fine GLNet

The global branch segments the downsampled image; the foreground box, relaxed to about 1:1
foreground to background, is then segmented GLNet-style at full resolution. Tiny sizes here:
96-pixel global view and patches, ResNet18, 32 FPN channels. `glmed.fit` trains in the paper's
stages (`glmed.paper_stages`): the global branch first, then the local branch with the global one fixed."""),
    ("code", """\
model = glmed.CoarseToFineGLNet(num_classes=2, backbone="resnet18", sharing="g2l",
                                fpn_channels=32, global_size=96, patch_size=96, overlap=16)
history = glmed.fit(model, train, stages=glmed.paper_stages("g2l", epochs=(12, 6)),
                    global_lr=1e-3, local_lr=1e-3, progress=False, log=None)
history.groupby("stage", sort=False).loss.agg(["first", "last"])"""),
    ("markdown", "## Segment a held-out image"),
    ("code", """\
image, truth = test[0]
result = glmed.predict(model, image)
print(f"refined boxes {result.boxes}, {result.patches} patches")
glmed.show_result(image, result, truth=truth);"""),
    ("markdown", """\
## Score a submission

ISIC names, 0/255 PNG masks; `glmed.score_submission` gives the official scorer's numbers, one row
per image, and refuses (naming the files) what the official scorer refuses."""),
    ("code", """\
(work / "truth").mkdir(), (work / "submission").mkdir()
for index, (image, truth) in enumerate(test):
    name = f"ISIC_{index:07d}_segmentation.png"
    write_mask_png(work / "truth" / name, truth)
    write_mask_png(work / "submission" / name, glmed.predict(model, image).mask)
per_image = glmed.score_submission(work / "truth", work / "submission")
per_image[["jaccard", "threshold_jaccard", "dice"]].round(3)"""),
    ("code", """\
print("headline, mean thresholded Jaccard:", round(per_image.attrs["summary"]["threshold_jaccard"], 4))
glmed.plot_scores(per_image);"""),
    ("markdown", """\
## Whole slides

A slide is mostly glass, with tissue in a few pieces. A second small network learns to find the
dense, dark tumour-like regions of generated H&E slides; then a larger slide, written as a pyramidal
TIFF (SVS, NDPI, ... read the same way with `glmed[wsi]`), streams through `glmed.predict_to_tiff`:
regions are read as needed and the mask is written tile by tile into a pyramidal TIFF, so memory does
not grow with the slide's area. An interrupted run resumes where it stopped."""),
    ("code", """\
slides = [make_slide_image((256, 320), seed) for seed in range(100, 112)]   # (RGB slide, tumour mask)
slide_model = glmed.GLNet(num_classes=2, backbone="resnet18", sharing="g2l",
                          fpn_channels=32, global_size=96, patch_size=96, overlap=16)
glmed.fit(slide_model, slides, stages=glmed.paper_stages("g2l", epochs=(6, 4)),
          global_lr=1e-3, local_lr=1e-3, progress=False, log=None)

slide_image, slide_truth = make_slide_image((768, 1024), seed=99)
write_pyramidal_tiff(work / "slide.tif", slide_image, tile=256, compression="zlib")
written = glmed.predict_to_tiff(slide_model, work / "slide.tif", work / "slide_mask.tif", tile=256)
with glmed.open_image(written.path) as mask_reader:
    print("mask levels:", mask_reader.level_sizes)
    slide_mask = mask_reader.read((0, 0, *mask_reader.size))[..., 0]
print(f"{written.patches} patches; tumour Jaccard against the generated truth: "
      f"{((slide_mask > 0) & (slide_truth > 0)).sum() / max(((slide_mask > 0) | (slide_truth > 0)).sum(), 1):.2f}")
glmed.show_result(slide_image, glmed.SegmentationResult(mask=slide_mask), truth=slide_truth);"""),
]


def code_cells() -> list[str]:
    """The notebook's code, cell by cell (what the test runs)."""
    return [source for kind, source in CELLS if kind == "code"]


def main() -> int:
    import nbformat
    from nbclient import NotebookClient

    from glmed.io.writers import atomic_path

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
                      for kind, text in CELLS]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    with atomic_path(NOTEBOOK) as temporary:
        nbformat.write(notebook, temporary)
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
