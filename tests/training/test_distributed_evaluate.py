"""Validation over two gloo processes scores every image exactly once, as one process does."""

import os
import socket

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from glmed.data.synthetic import make_dermoscopy_image
from glmed.models.glnet import GLNet
from glmed.training.distributed import close_distributed, init_distributed
from glmed.training.evaluate import evaluate

SIZES = dict(fpn_channels=8, global_size=64, patch_size=64, overlap=8)
IMAGES = 5  # odd: a padding sampler would score one image twice


class CountingPairs:
    """Validation pairs that remember which ones this process read."""

    def __init__(self, pairs):
        self.pairs, self.seen = pairs, []

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        self.seen.append(int(index))
        return self.pairs[index]


def _pairs():
    pairs = [make_dermoscopy_image((96, 128), seed) for seed in range(IMAGES)]
    pairs[1] = (pairs[1][0], np.zeros_like(pairs[1][1]))  # differing scores per image: a duplicate would show
    return pairs


def _model():
    torch.manual_seed(0)
    return GLNet(2, "resnet18", "g2l", **SIZES)


def _worker(rank: int, folder: str, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    context = init_distributed("cpu")
    try:
        pairs = CountingPairs(_pairs())
        table = evaluate(_model(), pairs, distributed=context)
        torch.save({"table": table.to_dict("list"), "summary": table.attrs["summary"], "seen": pairs.seen},
                   os.path.join(folder, f"rank{rank}.result"))
    finally:
        close_distributed()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_score_each_image_once_and_agree_with_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path), _free_port()), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.result", weights_only=False) for rank in range(2)]
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == list(range(IMAGES))  # each image read by one process
    single = evaluate(_model(), _pairs())
    for result in ranks:  # every process returns the whole table, in image order
        pd.testing.assert_frame_equal(pd.DataFrame(result["table"]), single.reset_index(drop=True),
                                      check_dtype=False)
        assert result["summary"] == pytest.approx(single.attrs["summary"])
    assert len(single) == IMAGES
