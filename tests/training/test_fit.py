import numpy as np
import torch

from glmed.data.synthetic import make_dermoscopy_image
from glmed.models.coarse_to_fine import CoarseToFineGLNet
from glmed.models.glnet import GLNet
from glmed.training.evaluate import evaluate
from glmed.training.fit import fit
from glmed.training.stages import paper_stages
from glmed.training.trainer import GLNetTrainer

SIZES = dict(fpn_channels=16, global_size=64, patch_size=64, overlap=8)


def data(count, offset=0):
    return [make_dermoscopy_image((160, 200), offset + i) for i in range(count)]


def test_fit_runs_every_stage_and_reports_each_epoch():
    model = CoarseToFineGLNet(2, "resnet18", "bidirectional", **SIZES)
    seen = []
    history = fit(model, data(3), stages=paper_stages("bidirectional", epochs=(2, 1, 1)),
                  on_step=lambda stage, step, terms: seen.append((stage.name, step)))
    assert history[["stage", "stage_epoch"]].values.tolist() == [["global", 1], ["global", 2], ["local", 1],
                                                          ["bidirectional", 1]]
    assert {"loss", "global"} <= set(history.columns) and history.loss.notna().all()
    assert seen[:2] == [("global", 1), ("global", 2)] and len(seen) == 2 + 2 + 2 + 2


def test_quick_coarse_to_fine_beats_local_only_and_learns():
    """The quick form of benchmarks/c2f_accuracy.py: same data, schedule and budget for each model."""
    train, test = data(6), data(3, offset=100)
    scores = {}
    for name, model, sharing in [("local", GLNet(2, "resnet18", "local_only", **SIZES), "local_only"),
                                 ("c2f", CoarseToFineGLNet(2, "resnet18", "g2l", **SIZES), "g2l")]:
        fit(model, train, stages=paper_stages(sharing, epochs=(6, 6)),
            trainer=GLNetTrainer(model, global_lr=1e-3, local_lr=1e-3))
        scores[name] = evaluate(model, test)
    print({name: round(float(table.jaccard.mean()), 3) for name, table in scores.items()})
    assert scores["c2f"].jaccard.mean() > scores["local"].jaccard.mean()
    assert scores["c2f"].jaccard.mean() > 0.3
    assert (scores["c2f"].patches < len(__import__("glmed").geometry.patch_grid((160, 200), 64, 8))).all()
    assert set(scores["c2f"].columns) >= {"jaccard", "threshold_jaccard", "dice", "patches"}


def test_evaluate_uses_the_isic_conventions_per_image():
    import torch

    model = GLNet(2, "resnet18", "global_only", **SIZES)
    with torch.no_grad():  # a model that always says background
        model.global_head.weight.zero_()
        model.global_head.bias.copy_(torch.tensor([1.0, -1.0]))
    image, label = make_dermoscopy_image((120, 150), 0)
    table = evaluate(model, [(image, np.zeros_like(label)), (image, label)])
    assert table.jaccard.tolist() == [1.0, 0.0]  # both empty scores 1; a missed lesion 0
    assert table.sensitivity.tolist() == [1.0, 0.0] and table.patches.tolist() == [0, 0]


def test_fit_takes_image_files(tmp_path):
    from PIL import Image

    pairs = []
    for index, (image, label) in enumerate(data(2)):
        path = tmp_path / f"ISIC_{index:07d}.png"
        Image.fromarray(image).save(path)
        pairs.append((path, label))
    model = GLNet(2, "resnet18", "g2l", **SIZES)
    history = fit(model, pairs, stages=paper_stages("g2l", epochs=(1, 1)))
    assert list(history.stage) == ["global", "local"]


def test_fit_closes_every_image_file_it_opens(tmp_path, monkeypatch):
    from PIL import Image

    import glmed.io

    opened = []
    real_open = glmed.io.open_image

    def recording_open(path, **options):
        reader = real_open(path, **options)
        opened.append(reader)
        real_close = reader.close
        reader.close = lambda: (opened.remove(reader), real_close())
        return reader

    monkeypatch.setattr(glmed.io, "open_image", recording_open)
    image, label = data(1)[0]
    Image.fromarray(image).save(tmp_path / "ISIC_0000000.png")
    fit(GLNet(2, "resnet18", "g2l", **SIZES), [(tmp_path / "ISIC_0000000.png", label)],
        stages=paper_stages("g2l", epochs=(1, 2)))
    assert opened == []  # each reader was closed after its sample


def test_fit_from_a_notebook_validates_reports_and_saves(tmp_path, capsys):
    import glmed

    model = glmed.CoarseToFineGLNet(2, "resnet18", "g2l", **SIZES)
    history = glmed.fit(model, data(2), val=data(1, offset=50), stages=glmed.paper_stages("g2l", epochs=(1, 1)),
                        progress=False)
    assert history.stage.tolist() == ["global", "local"]
    assert {"val_threshold_jaccard", "val_jaccard", "val_coarse_threshold_jaccard"} <= set(history.columns)
    # the global stage is scored on the global branch's own masks, the local stage on the full pipeline
    assert history.val_coarse_threshold_jaccard.between(0, 1).all()
    assert history.val_jaccard.isna().tolist() == [True, False] and 0 <= history.val_jaccard[1] <= 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and "val coarse threshold_jaccard" in lines[0] and "val threshold_jaccard" in lines[1]
    assert list(tmp_path.iterdir()) == []  # without out_dir nothing is written
    saved = glmed.save_model(model, tmp_path / "model.pt")
    again = glmed.load_model(saved)
    assert type(again) is type(model) and again.config == model.config
    image = data(1, offset=60)[0][0]
    assert (glmed.predict(again, image).mask == glmed.predict(model, image).mask).all()


def test_fit_with_a_run_folder_keeps_checkpoints_and_metrics(tmp_path):
    model = GLNet(2, "resnet18", "g2l", **SIZES)
    history = fit(model, data(2), stages=paper_stages("g2l", epochs=(1, 1)), out_dir=tmp_path / "run",
                  progress=False, log=None)
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    assert len(__import__("pandas").read_csv(tmp_path / "run" / "metrics.csv")) == len(history) == 2


def test_samples_do_not_depend_on_the_number_of_loading_workers(tmp_path):
    """Each sample draws from its own seed, so 0 and 2 worker processes give the same batches."""
    from PIL import Image

    from glmed.data.stage_samples import StageSampler
    from glmed.training.loader import epoch_loader

    pairs = []
    for index, (image, label) in enumerate(data(4)):
        path = tmp_path / f"ISIC_{index:07d}.png"
        Image.fromarray(image).save(path)  # files are opened inside the workers
        pairs.append((path, label))
    sampler = StageSampler(CoarseToFineGLNet(2, "resnet18", "g2l", **SIZES).config)
    for stage in paper_stages("bidirectional"):
        batches = [list(epoch_loader(pairs, [2, 0, 3, 1], sampler, stage, (7, 0, 1, 0, 1), 2, workers))
                   for workers in (0, 2)]
        assert len(batches[0]) == len(batches[1]) == 2
        for one, other in zip(*batches, strict=True):
            assert one.keys() == other.keys() and "source_size" in one
            for key in one:
                assert torch.equal(one[key], other[key]), (stage.name, key)


def test_fit_gives_the_same_model_with_and_without_loading_workers():
    trained = []
    for workers in (0, 1):
        torch.manual_seed(0)
        model = GLNet(2, "resnet18", "g2l", **SIZES)
        fit(model, data(3), stages=paper_stages("g2l", epochs=(1, 1)), num_workers=workers, progress=False, log=None)
        trained.append(model.state_dict())
    for name, tensor in trained[0].items():
        assert torch.equal(tensor, trained[1][name]), name


def test_the_old_argument_order_gets_a_clear_error():
    import pytest

    model = GLNet(2, "resnet18", "g2l", **SIZES)
    with pytest.raises(TypeError, match="stages="):
        fit(model, paper_stages("g2l"), data(1))


def test_validation_frequency_and_what_each_stage_is_validated_with(tmp_path, monkeypatch):
    """Every 2nd epoch and each stage's last are validated; the global stage never reads a patch."""
    import glmed.training.runner as runner_module

    calls = []
    real = runner_module.evaluate

    def recording(model, pairs, metric=None, **options):
        calls.append(options["global_only"])
        table = real(model, pairs, metric, **options)
        if options["global_only"]:
            assert (table.patches == 0).all()
        return table

    monkeypatch.setattr(runner_module, "evaluate", recording)
    model = CoarseToFineGLNet(2, "resnet18", "g2l", **SIZES)
    history = fit(model, data(2), val=data(1, offset=50), stages=paper_stages("g2l", epochs=(3, 2)),
                  validate_every=2, out_dir=tmp_path / "run", progress=False, log=None)
    assert calls == [True, True, False]  # global 2 and 3, local 2
    assert history.val_coarse_threshold_jaccard.notna().tolist() == [False, True, True, False, True]
    assert history.val_threshold_jaccard.notna().tolist() == [False, False, False, False, True]
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=False)["best"]
    assert (best["stage"], best["epoch"], best["kind"]) == ("local", 2, "full")


def test_a_full_pipeline_score_replaces_a_better_coarse_one():
    from glmed.training.runner import _better

    coarse_best = {"score": 0.9, "kind": "coarse", "epoch": 3}
    assert _better("full", 0.1, coarse_best, always=False)
    assert not _better("coarse", 0.95, {"score": 0.2, "kind": "full", "epoch": 1}, always=False)
    assert _better("coarse", 0.95, coarse_best, always=False)
    assert not _better(None, 0.0, coarse_best, always=False)
    assert not _better("full", 0.5, {"score": 0.6, "epoch": 2}, always=False)  # a record from before "kind"
