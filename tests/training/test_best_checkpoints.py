"""A run keeps its k best validated epochs, and load_checkpoints reads them back for an ensemble."""

import json

import pandas as pd
import pytest
import torch

import glmed
from glmed.data.synthetic import make_dermoscopy_image
from glmed.training.best_checkpoints import BestCheckpoints
from glmed.training.fit import fit
from glmed.training.stages import paper_stages

SIZES = dict(fpn_channels=16, global_size=64, patch_size=64, overlap=8)
SCRIPTED = [0.9, 0.3, 0.7, 0.5, 0.6]  # global 1 (coarse), local 1-4 (full)


def test_the_run_keeps_the_k_best_epochs_by_validation_score(tmp_path, monkeypatch):
    import glmed.training.runner as runner_module

    scores = iter(SCRIPTED)

    def scripted(model, pairs, metric=None, **options):
        table = pd.DataFrame({"threshold_jaccard": [0.0]})
        table.attrs["summary"] = {"threshold_jaccard": next(scores)}
        return table

    monkeypatch.setattr(runner_module, "evaluate", scripted)
    model = glmed.GLNet(2, "resnet18", "g2l", **SIZES)
    run = tmp_path / "run"
    history = fit(model, [make_dermoscopy_image((96, 96), 0)], val=[make_dermoscopy_image((96, 96), 1)],
                  stages=paper_stages("g2l", epochs=(1, 4)), out_dir=run, progress=False, log=None, keep_best=2,
                  num_workers=0)
    assert history.val_threshold_jaccard.tolist()[1:] == SCRIPTED[1:]
    listed = json.loads((run / "checkpoints" / "top.json").read_text())["checkpoints"]
    # a full-pipeline score outranks the coarse 0.9 of the global stage, as for best.pt
    assert [(entry["stage"], entry["epoch"], entry["score"]) for entry in listed] == [("local", 2, 0.7),
                                                                                      ("local", 4, 0.6)]
    assert sorted(p.name for p in (run / "checkpoints" / "top").iterdir()) == ["local-epoch002.pt",
                                                                               "local-epoch004.pt"]
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    kept = torch.load(run / "checkpoints" / "top" / "local-epoch002.pt", weights_only=False)
    assert kept["best"]["score"] == 0.7 and kept["position"]["epoch"] == 2
    for name, value in best["model"].items():  # the first kept is best.pt's epoch
        assert torch.equal(value, kept["model"][name])

    models = glmed.load_checkpoints(run, best=2)
    assert len(models) == 2 and all(isinstance(m, glmed.GLNet) for m in models)
    assert len(glmed.load_checkpoints(run)) == 2 and len(glmed.load_checkpoints(run, best=1)) == 1
    with pytest.raises(ValueError, match="kept its 2 best"):
        glmed.load_checkpoints(run, best=3)


def test_an_epoch_validated_again_replaces_its_entry_and_evicted_files_go(tmp_path):
    top = BestCheckpoints(tmp_path, 2)
    saved = []

    def save(path):
        path.write_bytes(b"weights")
        saved.append(path.name)

    assert top.offer(0.5, "full", "local", 1, save)
    assert top.offer(0.4, "full", "local", 2, save)
    assert not top.offer(0.3, "full", "local", 3, save)  # below both: not even written
    assert top.offer(0.6, "full", "local", 2, save)  # a resumed run validating epoch 2 again
    assert [(e["epoch"], e["score"]) for e in top.entries()] == [(2, 0.6), (1, 0.5)]
    assert top.offer(0.8, "full", "local", 4, save)
    assert [e["epoch"] for e in top.entries()] == [4, 2]
    assert sorted(p.name for p in top.folder.iterdir()) == ["local-epoch002.pt", "local-epoch004.pt"]
    assert "local-epoch003.pt" not in saved


def test_a_run_without_kept_checkpoints_names_the_option(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="--keep-best"):
        glmed.load_checkpoints(tmp_path, best=2)
