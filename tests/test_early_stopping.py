"""train.early_stopping: a run whose validation top-1 stops improving ends, tested on its best
epoch's weights, and says so in evaluation.json and the report."""

from __future__ import annotations

import json

import pytest

from cifar100 import cli
from cifar100.config import load_preset, set_value, validate
from cifar100.engine import epoch_end
from cifar100.errors import ConfigError
from cifar100.report import build_report
from cifar100.runtime.evaluation import Evaluation
from cifar100.runtime.trained_model import load
from synthetic_cifar import make_cifar10_archive
from tiny_run import SMALL


def test_early_stopping_is_a_setting_off_by_default():
    cfg = load_preset("scratch")
    assert cfg.train.early_stopping == 0
    set_value(cfg, "train.early_stopping", "3")  # --set train.early_stopping=3
    assert validate(cfg).train.early_stopping == 3
    set_value(cfg, "train.early_stopping", "-1")
    with pytest.raises(ConfigError, match=r"train.early_stopping=-1: must be >= 0"):
        validate(cfg)


@pytest.fixture
def flat_validation(monkeypatch):
    """Validation top-1 the same after every epoch: it improves once, at the first."""

    def flat(model, data, device, batch_size, amp):
        return {"loss": 1.0, "top1": 0.5}

    monkeypatch.setattr(epoch_end, "evaluate_model", flat)


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_run_whose_validation_stops_improving_stops_early(tmp_path, flat_validation):
    archive = make_cifar10_archive(tmp_path / "c10.tar.gz", 64, 32)
    run, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["train", *SMALL, "--data", str(archive), "--epochs", "6", "--out", str(run),
            "--set", "train.early_stopping=2", "--cache-dir", str(cache)]  # fmt: skip
    assert cli.main(argv) == 0
    assert [r["epoch"] for r in _records(run)] == [1, 2, 3]  # best at 1, then 2 without a gain
    evaluation = Evaluation.read(run / "evaluation.json")
    stop = evaluation.early_stopping
    assert (stop["after_epoch"], stop["of_epochs"], stop["best_epoch"]) == (3, 6, 1)
    assert stop["patience"] == 2 and stop["tested"] == "best"
    assert "did not improve for 2 epochs" in stop["reason"]
    # The final test is of the best epoch's weights: best.pt's, at epoch 1.
    assert evaluation.checkpoint.endswith("best.pt") and evaluation.epoch == 1
    assert load(run, checkpoint="best").info.test_top1 == evaluation.top1
    assert load(run).source.name == "best.pt"  # what the run tested, by default
    assert load(run, checkpoint="last").info.test_top1 is None  # last.pt (epoch 3) was not
    page = build_report(run, plots=False).read_text()
    assert "<b>stopped early</b> after epoch 3" in page and "best, epoch 1" in page
    # Resumed, it stays stopped: no more epochs; tested again, the same.
    argv = ["train", "--resume", str(run), "--cache-dir", str(cache), "--no-progress"]
    assert cli.main(argv) == 0
    assert len(_records(run)) == 3
    assert Evaluation.read(run / "evaluation.json").early_stopping["after_epoch"] == 3


@pytest.mark.slow
def test_without_early_stopping_every_epoch_is_trained(tmp_path, flat_validation):
    archive = make_cifar10_archive(tmp_path / "c10.tar.gz", 64, 32)
    run = tmp_path / "run"
    argv = ["train", *SMALL, "--data", str(archive), "--epochs", "3", "--out", str(run),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert cli.main(argv) == 0
    assert len(_records(run)) == 3
    evaluation = Evaluation.read(run / "evaluation.json")
    # Every epoch trained; the test is of the best validated epoch's weights (train.final=best),
    # the first of the highest validation top-1.
    vals = [r["val_top1"] for r in _records(run)]
    best = vals.index(max(vals)) + 1
    assert evaluation.early_stopping is None and evaluation.checkpoint.endswith("best.pt")
    assert evaluation.final == {"weights": "best", "epoch": best, "of_epochs": 3,
                                "setting": "best", "best_val_top1": max(vals)}  # fmt: skip
    assert evaluation.epoch == best
