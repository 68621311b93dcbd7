import subprocess
import sys

import numpy as np
from PIL import Image

import glmed
from glmed.cli import main


def test_import_glmed_stays_light():
    code = ("import sys, glmed; heavy = [m for m in ('torch', 'monai', 'openslide', 'tifffile', 'nibabel', 'pandas') "
            "if m in sys.modules]; print(','.join(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_public_api_resolves_lazily():
    for name in glmed.__all__:
        assert getattr(glmed, name) is not None
    assert glmed.GLNet.__module__ == "glmed.models.glnet"


def test_demo_command_trains_predicts_and_writes_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--images", "2", "--size", "256", "320"]) == 0
    mask = np.asarray(Image.open(out / "prediction.png"))
    assert mask.shape == (256, 320) and set(np.unique(mask)) <= {0, 255}
    assert Image.open(out / "overlay.png").format == "PNG"
    printed = capsys.readouterr().out
    assert "held-out image: IoU" in printed and "stage local done" in printed
    assert sorted(p.name for p in out.iterdir()) == ["overlay.png", "prediction.png"]
