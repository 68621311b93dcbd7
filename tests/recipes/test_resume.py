"""A demo run killed with SIGKILL and resumed ends exactly as an uninterrupted run of the same seed."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from glmed.models.checkpoint import load_checkpoint

TIMING_COLUMNS = ["train_seconds", "total_seconds"]


def _command(repo, out, tiny_options, *extra):
    # Two epochs per stage, so that a kill after the first checkpoint leaves work to resume.
    return [sys.executable, str(repo / "recipes" / "isic_c2f.py"), "--demo", "--out", str(out), "--seed", "3",
            *tiny_options, "--epochs", "2", *extra]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_outputs(repo, tiny_options, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = subprocess.Popen(_command(repo, whole, tiny_options), env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    victim = subprocess.Popen(_command(repo, killed, tiny_options), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    assert last.exists() and not (killed / "summary.json").exists(), "the run must be killed partway"
    epochs_before = len(load_checkpoint(last)["history"])
    assert epochs_before < 6

    resumed = subprocess.run(_command(repo, killed, tiny_options, "--resume"), env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming after epoch" in resumed.stdout
    output, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, output

    assert (killed / "scores.csv").read_bytes() == (whole / "scores.csv").read_bytes()
    submissions = sorted(p.name for p in (whole / "submission").iterdir())
    assert submissions == sorted(p.name for p in (killed / "submission").iterdir()) and submissions
    for name in submissions:
        assert (killed / "submission" / name).read_bytes() == (whole / "submission" / name).read_bytes()
    for checkpoint in ("last.pt", "best.pt"):
        a, b = (load_checkpoint(run / "checkpoints" / checkpoint) for run in (whole, killed))
        assert a["position"] == b["position"] and a["best"] == b["best"]
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), (checkpoint, key)
    metrics = [pd.read_csv(run / "metrics.csv").drop(columns=TIMING_COLUMNS) for run in (whole, killed)]
    pd.testing.assert_frame_equal(*metrics)
    assert not list(killed.rglob(".*.tmp*"))  # no half-written file left behind
