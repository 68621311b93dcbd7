"""Shared test settings: small, deterministic, CPU-only."""

import numpy as np
import pytest
import torch

# Tiny tensors gain nothing from threads, and a busy second core makes OpenMP threads wait on
# each other a hundredfold longer; one thread keeps the suite fast and steady.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
