"""The typed records a run holds: Checkpoint (with the ModelInfo every export carries, and the
older layouts still read), RunDir (the one place a run's file names are spelled), Evaluation."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

import cifar100
from cifar100.config import Config, apply_overrides
from cifar100.digest import content_digest
from cifar100.errors import CheckpointError
from cifar100.models.registry import build_model
from cifar100.runtime.checkpoint import Checkpoint, load_checkpoint
from cifar100.runtime.evaluation import Evaluation
from cifar100.runtime.model_info import ModelInfo
from cifar100.runtime.run_dir import RunDir

CLASSES = ["apple", "bee", "cat"]


def _config() -> Config:
    overrides = ["model.backbone=efficientnet_lite0", "model.weights=none", "model.resize=1",
                 "model.head_units=8"]  # fmt: skip
    return apply_overrides(Config(), overrides)


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return build_model(_config().model, num_classes=len(CLASSES)).state_dict()


def test_a_checkpoint_holds_the_model_record_the_exports_carry(weights, tmp_path):
    info = ModelInfo(_config(), CLASSES, 32, dataset="custom", saved_at="2026-12-06T10:00:00")
    Checkpoint(info, weights, phase="finetune", epoch=3, best_val_top1=0.5, best_epoch=2).save(
        tmp_path / "m.pt"
    )
    state = load_checkpoint(tmp_path / "m.pt")
    assert state["version"] == 3 and state["info"] == json.loads(json.dumps(info.to_json()))
    assert "classes" not in state  # one record, not loose keys
    again = Checkpoint.load(tmp_path / "m.pt")
    assert again.info.classes == CLASSES and again.info.saved_at == info.saved_at
    assert (again.phase, again.epoch, again.best_epoch, again.optimizer) == ("finetune", 3, 2, None)
    assert again.info.epoch == 3 and again.info.model.weights == "none"
    assert all(torch.equal(again.model[k], v) for k, v in weights.items())


def test_a_version_2_checkpoint_with_loose_keys_still_loads(weights, tmp_path):
    """The layout every checkpoint had before the record: its facts as keys of their own."""
    state = {
        "format": "cifar100-checkpoint",
        "version": 2,
        "config": _config().to_dict(),
        "classes": CLASSES,
        "image_size": 32,
        "dataset": "custom",
        "model": weights,
        "phase": "finetune",
        "epoch": 2,
        "best_val_top1": 0.4,
        "val_top1": 0.4,
    }
    state["digest"] = content_digest(state)
    torch.save(state, tmp_path / "old.pt")
    ckpt = Checkpoint.load(tmp_path / "old.pt")
    assert ckpt.info.classes == CLASSES and ckpt.epoch == 2
    assert ckpt.recorded_best_epoch() == 2  # it ended as the best, before best_epoch was kept
    model = cifar100.load(tmp_path / "old.pt", device="cpu")
    assert model.classes == CLASSES and model.predict([torch.zeros(32, 32, 3).byte().numpy()])


def test_a_checkpoint_without_classes_is_one_clear_error(weights, tmp_path):
    state = {"format": "cifar100-checkpoint", "version": 2, "config": _config().to_dict(),
             "model": weights}  # fmt: skip
    state["digest"] = content_digest(state)
    torch.save(state, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="lacks 'classes'"):
        Checkpoint.load(tmp_path / "bare.pt")


def test_a_run_directory_names_its_files(tmp_path):
    run = RunDir(tmp_path / "run")
    assert [p.name for p in (run.config, run.last, run.best, run.evaluation, run.report)] == [
        "config.json", "last.pt", "best.pt", "evaluation.json", "report.html"]  # fmt: skip
    assert run.checkpoint("best") == run.best and run.evaluation_variant("-ema").name == (
        "evaluation-ema.json"
    )
    assert not run.is_run()
    run.path.mkdir()
    run.config.write_text("{}")
    (run / "evaluation-best-tta.json").write_text("{}")
    assert run.is_run() and run.variant_evaluations() == [
        (["best", "tta"], run.path / "evaluation-best-tta.json")
    ]
    # evaluate --corruptions' records are their own kind, not variants of evaluation.json
    for name in ("evaluation-corruptions.json", "m.onnx.eval.json", "m.onnx.eval-corruptions.json"):
        (run / name).write_text("{}")
    assert run.corruption_evaluation == run.path / "evaluation-corruptions.json"
    assert [words for words, _ in run.variant_evaluations()] == [["best", "tta"]]
    assert run.file_evaluations() == [run.path / "m.onnx.eval.json"]
    assert run.file_corruption_evaluations() == [run.path / "m.onnx.eval-corruptions.json"]


def test_an_evaluation_reads_its_values_typed(tmp_path):
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps({"top1": 0.9, "top5": 1.0, "per_class": {"a": 1.0, "b": "x"},
                                "train_wall_s": "slow", "ema": 3, "new_key": [1]}))  # fmt: skip
    e = Evaluation.read(path)
    assert e.top1 == 0.9 and e.per_class == {"a": 1.0}  # the value of another type left out
    assert e.top5 is None  # 5 classes or fewer: top-5 says nothing (metrics.top5_applies)
    assert e.train_wall_s is None and e.ema == {} and e.ema_top1 is None
    e.write(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text())["new_key"] == [1]  # kept whole


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", '{"top1": "90%"}'])
def test_a_damaged_evaluation_is_one_clear_error(tmp_path, content):
    path = tmp_path / "evaluation.json"
    path.write_text(content)
    with pytest.raises(CheckpointError, match=str(path)):
        Evaluation.read_complete(path)
    assert Evaluation.read_if_usable(path) is None


def test_old_checkpoints_of_every_format_version_are_zip_files_torch_reads(tmp_path, weights):
    """Version 3 is still a plain torch zip: other tools read it with torch.load alone."""
    info = ModelInfo(_config(), CLASSES, 32)
    Checkpoint(info, weights).save(tmp_path / "m.pt")
    assert zipfile.is_zipfile(tmp_path / "m.pt")
    raw = torch.load(Path(tmp_path / "m.pt"), weights_only=True)
    assert raw["info"]["classes"] == CLASSES


@pytest.mark.slow
def test_the_model_record_keeps_the_weights_setting_the_run_started_from(weights, tmp_path):
    """config.json says "imagenet": so does every record of the model, and loading it fetches
    nothing (the weights come with the file; the suite is offline)."""
    from cifar100.export.formats import export_model

    cfg = apply_overrides(_config(), ["model.weights=imagenet"])
    Checkpoint(ModelInfo(cfg, CLASSES, 32), weights, epoch=1).save(tmp_path / "m.pt")
    assert Checkpoint.load(tmp_path / "m.pt").info.config.model.weights == "imagenet"
    model = cifar100.load(tmp_path / "m.pt", device="cpu")
    assert model.info.config.model.weights == "imagenet"
    export_model(model, "safetensors", tmp_path / "m.safetensors")
    exported = cifar100.load(tmp_path / "m.safetensors", device="cpu")
    assert exported.info.config.model.weights == "imagenet"
    assert all(torch.equal(exported.module.state_dict()[k], v) for k, v in weights.items())
