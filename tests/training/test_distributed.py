"""Two CPU processes over gloo: the staged runner under DDP, identical weights, each rank its own share of images."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from glmed.data.stage_samples import StageSampler
from glmed.data.synthetic import make_dermoscopy_image
from glmed.metrics.validation import IsicMetric
from glmed.models.checkpoint import load_checkpoint
from glmed.models.glnet import GLNet
from glmed.training.distributed import SINGLE, Distributed, close_distributed, init_distributed
from glmed.training.runner import StagedRunner
from glmed.training.stages import paper_stages
from glmed.training.trainer import GLNetTrainer

REPO = Path(__file__).resolve().parents[2]
SIZES = dict(fpn_channels=8, global_size=64, patch_size=64, overlap=8)
IMAGES = 6


@pytest.mark.parametrize("count, world", [(7, 3), (6, 2), (1, 2)])
def test_each_process_loads_its_share_of_the_order_and_the_same_samples_as_one_process(count, world):
    from glmed.training.loader import epoch_loader

    pairs = [make_dermoscopy_image((96, 128), seed) for seed in range(count)]
    order = list(np.random.default_rng(0).permutation(count))
    stage = paper_stages("g2l", (1, 1))[1]
    sampler = StageSampler(GLNet(2, "resnet18", "g2l", **SIZES).config)

    def images(context):
        loader = epoch_loader(pairs, order, sampler, stage, (0, 1, 1, 0, 1), 1, distributed=context)
        return [batch for batch in loader]

    single = images(SINGLE)
    shares = [images(Distributed(rank, world)) for rank in range(world)]
    assert len({len(share) for share in shares}) == 1  # equal steps: no process waits forever
    for rank, share in enumerate(shares):
        for step, batch in enumerate(share):
            position = (rank + step * world) % count  # every world-th item, padded from the start
            assert torch.equal(batch["patches"], single[position]["patches"])

class RecordingPairs:
    """Training pairs that remember which ones this process read."""

    def __init__(self, pairs):
        self.pairs, self.seen = pairs, []

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        self.seen.append(int(index))
        return self.pairs[index]


def _worker(rank: int, folder: str, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    context = init_distributed("cpu")
    try:
        torch.manual_seed(rank)  # different initial weights on purpose: DDP starts every rank from rank 0's
        model = GLNet(2, "resnet18", "global_only", **SIZES)

        pairs = [make_dermoscopy_image((96, 128), seed) for seed in range(IMAGES + 2)]
        train = RecordingPairs(pairs[:IMAGES])
        trainer = GLNetTrainer(model, global_lr=1e-3, distributed=context)
        runner = StagedRunner(trainer, StageSampler(model.config), paper_stages("global_only", (2,)), train,
                              pairs[IMAGES:], IsicMetric(), folder, images_per_step=1, seed=0,
                              distributed=context, progress=False, log=lambda _: None,
                              num_workers=0)  # pairs are indexed here, where `seen` records them
        result = runner.run()
        torch.save({"state": model.state_dict(), "seen": train.seen, "best": result.best},
                   os.path.join(folder, f"rank{rank}.result"))
    finally:
        close_distributed()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_share_the_images_and_end_with_identical_weights(tmp_path):
    """The staged runner under DDP (see test_ddp.py for the step itself against one process)."""
    mp.spawn(_worker, args=(str(tmp_path), _free_port()), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.result", weights_only=True) for rank in range(2)]

    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    # Each epoch's order is split between the ranks: together they read every image once.
    per_epoch = IMAGES // 2
    for epoch in range(2):
        shares = [r["seen"][epoch * per_epoch : (epoch + 1) * per_epoch] for r in ranks]
        assert not set(shares[0]) & set(shares[1])
        assert sorted(shares[0] + shares[1]) == list(range(IMAGES))
    # Only rank 0 wrote, and what it saved is what every rank holds; both saw the same validation.
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert saved["world_size"] == 2 and saved["position"]["epoch"] == 2
    for key, value in saved["model"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert ranks[0]["best"] == ranks[1]["best"]


@pytest.mark.slow
def test_the_isic_recipe_runs_under_torchrun(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "recipes" / "isic_c2f.py"), "--demo", "--out", str(out), "--images", "6",
               "--image-size", "96", "112", "--split", "4", "1", "1", "--epochs", "1", "--global-size", "64",
               "--patch-size", "64", "--overlap", "8", "--fpn-channels", "8", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 process(es) on cpu" in done.stdout
    assert done.stdout.count("test (1 images)") == 1  # rank 0 alone reports
    assert load_checkpoint(out / "checkpoints" / "last.pt")["world_size"] == 2
    assert len(list((out / "submission").glob("ISIC_*_segmentation.png"))) == 1
    assert (out / "scores.csv").is_file() and (out / "summary.json").is_file()
