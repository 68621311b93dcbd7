"""Two CPU processes over gloo: averaged gradients, identical weights, each rank its own share of images."""

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


@pytest.mark.parametrize("count, world", [(7, 3), (6, 2), (1, 2), (0, 2)])
def test_shards_are_equal_in_length_and_cover_the_order(count, world):
    order = list(np.random.default_rng(0).permutation(count))
    shards = [Distributed(rank, world).shard(order) for rank in range(world)]
    assert len({len(shard) for shard in shards}) == 1
    assert set().union(*shards) == set(order)
    if count % world == 0:
        assert sorted(i for shard in shards for i in shard) == sorted(order)  # nothing repeated
    assert SINGLE.shard(order) == order


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
        torch.manual_seed(rank)  # different initial weights on purpose: the broadcast must fix that
        model = GLNet(2, "resnet18", "global_only", **SIZES)
        context.broadcast_module(model)
        hook = context.gradient_hook(model)

        # The hook replaces each rank's gradients by their mean over ranks. Only rank 0's loss
        # reaches the layers that make the FPN's "s3" map (rank 1 counts as zero there); the head
        # reaches no loss on any rank and must keep no gradient, as in a single process.
        image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(100 + rank))
        maps = model.global_features(image)
        loss = maps["s2"].square().mean()
        if rank == 0:
            loss = loss + maps["s3"].square().mean()
        loss.backward()
        own = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        everyone = context.gather(own)
        hook()
        gradient_error, unused_kept_none = 0.0, True
        for p, a, b in zip(model.parameters(), *everyone):
            if a is None and b is None:
                unused_kept_none &= p.grad is None
                continue
            mean = ((a if a is not None else 0) + (b if b is not None else 0)) / 2
            gradient_error = max(gradient_error, float((p.grad - mean).abs().max()))
        partly_used = sum((a is None) != (b is None) for a, b in zip(*everyone))
        unused = sum(a is None and b is None for a, b in zip(*everyone))
        model.zero_grad(set_to_none=True)

        pairs = [make_dermoscopy_image((96, 128), seed) for seed in range(IMAGES + 2)]
        train = RecordingPairs(pairs[:IMAGES])
        trainer = GLNetTrainer(model, global_lr=1e-3, after_backward=hook)
        runner = StagedRunner(trainer, StageSampler(model.config), paper_stages("global_only", (2,)), train,
                              pairs[IMAGES:], IsicMetric(), folder, images_per_step=1, seed=0,
                              distributed=context, progress=False, log=lambda _: None,
                              num_workers=0)  # pairs are indexed here, where `seen` records them
        result = runner.run()
        torch.save({"state": model.state_dict(), "seen": train.seen, "gradient_error": gradient_error,
                    "unused_kept_none": unused_kept_none, "partly_used": partly_used, "unused": unused,
                    "best": result.best}, os.path.join(folder, f"rank{rank}.result"))
    finally:
        close_distributed()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_average_gradients_and_end_with_identical_weights(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path), _free_port()), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.result", weights_only=True) for rank in range(2)]

    assert all(r["gradient_error"] < 1e-6 for r in ranks)
    assert all(r["partly_used"] > 0 and r["unused"] > 0 and r["unused_kept_none"] for r in ranks)
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
