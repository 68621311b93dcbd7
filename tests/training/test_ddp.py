"""DistributedDataParallel over two CPU processes (gloo): the same step as one process on both batches.

One spawned run trains a tiny coarse-to-fine bidirectional GLNet through the paper's three
stages (global, local, bidirectional with its collect pass), one step each, each process on
its own batch; a single process then repeats the schedule on both batches and the tests
compare what the two runs hold after each stage.
"""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from glmed.data.samples import collate_global_local, global_local_sample
from glmed.geometry import patch_grid
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.glnet import GLNet
from glmed.training.distributed import close_distributed, init_distributed
from glmed.training.stages import GLOBAL_PARTS, LISTENING_PART, LOCAL_PARTS, Stage, paper_stages
from glmed.training.trainer import GLNetTrainer, needs_unused_parameter_search

STAGES = paper_stages("bidirectional")
LR = 1e-3


def tiny(sharing="bidirectional", cls=CoarseToFineGLNet):
    return cls(2, "resnet18", sharing, fpn_channels=8, global_size=64, patch_size=48, overlap=8)


def batch_of(rank):
    """One image per process, each with a bright square where its label is 1 (6 patches of 48 px)."""
    rng = np.random.default_rng(10 + rank)
    size = (96, 80)
    image = rng.integers(0, 60, size + (3,), dtype=np.uint8)
    label = np.zeros(size, dtype=np.uint8)
    r, c = rng.integers(10, 40, 2)
    label[r:r + 30, c:c + 30] = 1
    image[label == 1] += 150
    return collate_global_local([global_local_sample(image, patch_grid(size, 48, 8).boxes, label, global_size=64)])


def trainer_for(model, **options):
    return GLNetTrainer(model, global_lr=LR, local_lr=LR, patches_per_step=None, **options)


def snapshot(model):
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "parameters": [name for name, _ in model.named_parameters()],
            "grads": {n: None if p.grad is None else p.grad.detach().clone()
                      for n, p in model.named_parameters() if p.requires_grad}}  # this stage's


def _worker(rank, folder, port):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    context = init_distributed("cpu")
    try:
        torch.manual_seed(rank)  # different initial weights on purpose: DDP starts every rank from rank 0's
        model = tiny()
        trainer = trainer_for(model, distributed=context)
        results = []
        for stage in STAGES:  # the same trainer re-wraps the model for each stage
            trainer.train_epoch(stage, [batch_of(rank)], trainer.optimizer(stage))
            results.append(snapshot(model))
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        close_distributed()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """What both processes held after each stage, and what one process holds after the same steps.

    The single process takes, per stage, one optimiser step on the mean of the two batches'
    losses: the gradient DDP's average gives for equal-sized batches. Each batch goes through
    its own forward pass, as in its process, so that BatchNorm layers in training mode normalise
    each batch with its own statistics; and before the next stage the single process takes
    rank 0's BatchNorm statistics, as DDP gives every process.
    """
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(folder), _free_port()), nprocs=2, join=True)
    ranks = [torch.load(folder / f"rank{rank}.pt", weights_only=True) for rank in range(2)]

    torch.manual_seed(0)
    model = tiny()
    trainer = trainer_for(model)
    alone = []
    for index, stage in enumerate(STAGES):
        optimizer = trainer.optimizer(stage)
        trainer.prepare(stage)
        optimizer.zero_grad(set_to_none=True)
        total = sum(trainer.losses(stage, batch_of(rank))[0] for rank in range(2)) / 2
        total.backward()
        optimizer.step()
        alone.append(snapshot(model))
        buffers = dict(model.named_buffers())
        with torch.no_grad():
            for name, value in ranks[0][index]["state"].items():
                if name in buffers:
                    buffers[name].copy_(value)
    return ranks, alone


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(STAGES)), ids=[stage.name for stage in STAGES])
def test_both_processes_end_each_stage_with_identical_weights(runs, index):
    ranks, _ = runs
    first, second = (r[index]["state"] for r in ranks)
    for name, value in first.items():  # parameters and BatchNorm statistics alike
        assert torch.equal(value, second[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(STAGES)), ids=[stage.name for stage in STAGES])
def test_a_ddp_step_is_the_single_process_step_on_both_batches(runs, index):
    ranks, alone = runs
    stage, got, want = STAGES[index], ranks[0][index], alone[index]
    before = alone[index - 1]["state"] if index else None
    trained = 0
    assert got["grads"].keys() == want["grads"].keys()
    for name, grad in want["grads"].items():
        # A parameter no process used keeps no gradient (the optimiser skips it), as in one process;
        # the global stage of a bidirectional model leaves its local→global convolutions so.
        assert (got["grads"][name] is None) == (grad is None), name
        if grad is not None:
            trained += 1
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
            if before is not None and grad.any():  # zero-initialised residual branches give zeros at first
                assert not torch.equal(want["state"][name], before[name]), f"{name} did not learn"
    for name in want["parameters"]:  # all of them: the frozen ones stayed as they were in both runs
        torch.testing.assert_close(got["state"][name], want["state"][name], rtol=0, atol=1e-5, msg=name)
    assert trained
    if stage.name == "global":
        assert any(grad is None for name, grad in want["grads"].items() if "global_branch" in name)


CUSTOM = [
    ("bidirectional", Stage("global", GLOBAL_PARTS)),
    ("bidirectional", Stage("local", LOCAL_PARTS)),
    ("bidirectional", Stage("bidirectional", (LISTENING_PART, "aggregate"), collect_local=True)),
    ("bidirectional", Stage("heads without their branch", ("aggregate", "local_head"))),
    ("bidirectional", Stage("everything", GLOBAL_PARTS + LOCAL_PARTS)),
    ("bidirectional", Stage("everything with context", GLOBAL_PARTS + LOCAL_PARTS, collect_local=True)),
    ("g2l", Stage("heads without their branch", ("aggregate", "local_head"))),
    ("g2l", Stage("local", LOCAL_PARTS)),
    ("local_only", Stage("head alone", ("local_head",))),
]


@pytest.mark.parametrize("sharing, stage", CUSTOM, ids=[f"{m}-{s.name}" for m, s in CUSTOM])
def test_the_unused_parameter_rule_matches_the_gradients_a_step_leaves(sharing, stage):
    """DDP needs find_unused_parameters exactly where a trainable parameter gets no gradient."""
    model = tiny(sharing, GLNet)
    trainer = trainer_for(model)
    trainer.step(stage, batch_of(0), trainer.optimizer(stage))
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert needs_unused_parameter_search(model, stage) == bool(unused), unused
