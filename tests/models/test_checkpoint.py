import json

import pytest
import torch

from glmed.io.writers import atomic_path
from glmed.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    remove_stale_temporaries,
    save_checkpoint,
)
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.glnet import GLNet
from glmed.training.stages import paper_stages
from glmed.training.trainer import GLNetTrainer

SIZES = dict(fpn_channels=8, global_size=32, patch_size=32, overlap=4)


def test_round_trip_rebuilds_the_model_and_restores_training_state(tmp_path):
    model = CoarseToFineGLNet(2, "resnet18", "bidirectional", target_ratio=0.8, **SIZES)
    trainer = GLNetTrainer(model)
    stage = paper_stages("bidirectional")[0]
    optimizer = trainer.optimizer(stage)
    image = torch.randn(2, 3, 64, 64)
    model.global_logits(model.global_features(image), (64, 64)).sum().backward()
    optimizer.step()
    position = {"stage_index": 0, "stage": "global", "epoch": 1}
    save_checkpoint(tmp_path / "ck" / "last.pt", model, optimizer=optimizer.state_dict(), position=position,
                    best={"score": 0.5, "metric": "threshold_jaccard", "stage": "global", "epoch": 1},
                    history=[{"epoch": 1, "loss": 0.25}], stages=[s.to_dict() for s in paper_stages("g2l")])

    record = load_checkpoint(tmp_path / "ck" / "last.pt")  # weights_only=True inside
    assert record["position"] == position and record["history"] == [{"epoch": 1, "loss": 0.25}]
    assert json.loads(record["model_config"])["target_ratio"] == 0.8
    rebuilt = load_model(tmp_path / "ck" / "last.pt")
    assert type(rebuilt) is CoarseToFineGLNet and rebuilt.config == model.config and not rebuilt.training
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    fresh = GLNetTrainer(rebuilt).optimizer(stage)
    fresh.load_state_dict(record["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = GLNet(2, "resnet18", "g2l", **SIZES)
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, position={"epoch": 1})
    before = path.read_bytes()

    def broken_save(obj, file):
        with open(file, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the run is stopped mid-write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, position={"epoch": 2})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(path)["position"] == {"epoch": 1}


def test_stale_temporaries_of_a_killed_write_are_removed_and_nothing_else(tmp_path):
    keep = [tmp_path / "metrics.csv", tmp_path / "checkpoints" / "last.pt", tmp_path / ".hidden"]
    for path in keep:
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
    stale = []
    for target in (tmp_path / "metrics.csv", tmp_path / "checkpoints" / "last.pt"):
        with pytest.raises(RuntimeError), atomic_path(target) as temporary:
            stale.append(temporary)
            raise RuntimeError
    for temporary in stale:  # what a kill -9 mid-write leaves: the temporary, under atomic_path's name
        open(temporary, "w").close()
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(map(str, removed)) == sorted(stale)
    assert all(path.exists() for path in keep)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_unusable_files_are_refused_with_their_name(tmp_path, content):
    path = tmp_path / "broken.pt"
    if content is None:
        torch.save({"weights": torch.zeros(1)}, path)  # a readable file that is not a glmed checkpoint
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def _garbage(path, kind):
    if kind == "text":
        path.write_text("these are not the weights you are looking for\n")
    elif kind == "truncated":
        save_checkpoint(path, GLNet(2, "resnet18", "g2l", **SIZES))
        path.write_bytes(path.read_bytes()[:50_000])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "git lfs pointer":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1234\n")
    elif kind == "python objects":
        torch.save({"format": 1, "model": {}, "step": slice(1, 2)}, path)


@pytest.mark.parametrize("kind, reason", [
    ("text", "a text file starting 'these are not the weights"),
    ("truncated", "damaged or cut-off"),
    ("empty", "empty file"),
    ("git lfs pointer", "git lfs pull"),
    ("python objects", "Python objects (slice)"),
])
def test_a_garbage_checkpoint_is_one_line_that_never_suggests_unsafe_loading(tmp_path, kind, reason):
    path = tmp_path / "x.pt"
    _garbage(path, kind)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a glmed checkpoint (") and reason in message
    assert "\n" not in message and "weights_only" not in message and "issue" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # torch's advice is not chained in


def test_a_missing_cuda_device_is_not_blamed_on_the_file(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    save_checkpoint(path, GLNet(2, "resnet18", "g2l", **SIZES))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="map_location='cuda': this machine has no CUDA device") as info:
        load_checkpoint(path, map_location="cuda")
    assert not isinstance(info.value, CheckpointError) and "checkpoint" not in str(info.value)
