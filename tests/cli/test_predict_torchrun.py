"""Two processes under torchrun split a folder of slides without overlap (CPU, no process group needed)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glmed.data.synthetic.slides import write_synthetic_slide
from glmed.inference.provenance import RunRecord
from glmed.models.checkpoint import save_checkpoint
from glmed.models.glnet import GLNet

ROOT = Path(__file__).resolve().parents[2]
SLIDES = 5


@pytest.fixture
def slide_folder(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    for index in range(SLIDES):
        kind, name = ("aperio", f"s{index}.svs") if index % 2 else ("tiff", f"s{index}.tif")
        write_synthetic_slide(folder / name, (96, 112), seed=index, kind=kind, tile=64, mpp=4.0)
    return folder


def test_two_processes_under_torchrun_split_a_folder_of_slides_without_overlap(tmp_path, slide_folder):
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, GLNet(2, "resnet18", "g2l", fpn_channels=8, global_size=32, patch_size=64, overlap=8))
    out = tmp_path / "masks"
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environ.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "glmed.cli", "predict", str(checkpoint), str(slide_folder), str(out), "--format", "tif",
               "--device", "cpu", "--quiet"]
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    shares = [line for line in done.stdout.splitlines() if line.startswith("part ")]
    assert sorted(line.split(" (")[0] for line in shares) == ["part 1/2", "part 2/2"]
    wrote = [line.split(": ")[1].split()[0] for line in done.stdout.splitlines() if line.startswith("wrote ")]
    names = sorted(p.name for p in slide_folder.iterdir())
    assert sorted(wrote) == names  # every slide exactly once: none twice, none left out
    assert sorted(p.name for p in out.glob("*_mask.tif")) == [f"{Path(n).stem}_mask.tif" for n in names]
    for mask in out.glob("*_mask.tif"):  # each mask's record, written by the one process that made it
        assert RunRecord.load(mask).summary["status"] == "done"
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["slide"] for row in rows) == names  # a line per slide, whichever process wrote it last
