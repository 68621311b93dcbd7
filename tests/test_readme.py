"""README.md's Python snippets run as written, on tiny stand-ins for the files they name."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import glmed
from glmed.data.synthetic import make_dermoscopy_image
from glmed.io.writers import write_mask_png
from glmed.models.resnet import ResNetEncoder

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def test_the_readme_has_python_snippets():
    assert len(python_blocks()) >= 2


def test_the_readme_python_snippets_run_as_written(tmp_path):
    image, label = make_dermoscopy_image((240, 320), 0)
    Image.fromarray(image).save(tmp_path / "ISIC_0000000.jpg", quality=95)
    # the ImageNet weights a user would download: a ResNet50 state dict with torchvision's names
    torch.save(ResNetEncoder("resnet50").state_dict(), tmp_path / "resnet50-0676ba61.pth")
    # the network the README's recipe command trains, tiny
    trained = glmed.CoarseToFineGLNet(2, "resnet18", "bidirectional", fpn_channels=8, global_size=64,
                                      patch_size=64, overlap=8)
    glmed.save_model(trained, tmp_path / "runs" / "demo" / "checkpoints" / "best.pt")
    for folder in ("ISIC2018_Task1_Test_GroundTruth", "submission"):
        (tmp_path / folder).mkdir()
        write_mask_png(tmp_path / folder / "ISIC_0000000_segmentation.png", label)

    script = tmp_path / "readme_snippets.py"
    script.write_text("\n".join(python_blocks()) + "\nprint('snippets ran')\n")
    environment = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          env=environment, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "snippets ran" in done.stdout and "SegmentationResult(240×320" in done.stdout
    assert (tmp_path / "my_model.pt").is_file()
    assert np.asarray(Image.open(tmp_path / "ISIC_0000000.jpg")).shape == (240, 320, 3)
