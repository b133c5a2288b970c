"""engine.optim.lr_schedule: every step's learning rate, checked against the rate each optimizer
step of a real (tiny) run took, and the per-step plot drawn from it."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from torch.optim.optimizer import register_optimizer_step_pre_hook

from cifar100.config import TrainConfig, apply_overrides, load_preset
from cifar100.engine.train import train
from cifar100.runtime import run_dir as runs
from cifar100.schedule import lr_schedule, steps_per_epoch
from synthetic_cifar import make_cifar100_archive


def test_steps_per_epoch_as_the_trainers_take_them():
    t = TrainConfig(batch_size=32)
    assert steps_per_epoch(t, 144) == 4  # fine-tuning drops the last 16 images' partial batch
    assert steps_per_epoch(t, 128) == 4 and steps_per_epoch(t, 20) == 1  # one batch: kept
    assert steps_per_epoch(TrainConfig(batch_size=32, accumulate=4), 144) == 4  # micro-batches
    features = TrainConfig(batch_size=32, mode="features", feature_flip=True)
    assert steps_per_epoch(features, 144) == 9  # 288 rows: the mirror images too
    assert steps_per_epoch(TrainConfig(batch_size=32, mode="features", feature_flip=False), 20) == 1


def test_schedule_holds_head_lr_then_warms_up_and_decays():
    t = TrainConfig(epochs=4, freeze_epochs=1, batch_size=32, head_lr=1e-3, lr=0.012,
                    warmup_epochs=0.5)  # fmt: skip
    schedule = lr_schedule(t, 144)  # 4 steps an epoch
    assert [s.step for s in schedule] == list(range(16))
    assert [s.epoch for s in schedule][3::4] == [1.0, 2.0, 3.0, 4.0]
    assert [s.phase for s in schedule] == ["frozen"] * 4 + ["finetune"] * 12
    assert {s.lr for s in schedule[:4]} == {1e-3}
    tuned = [s.lr for s in schedule[4:]]
    assert tuned[:3] == pytest.approx([0.006, 0.012, 0.012])  # two warm-up steps, then the peak
    assert tuned[2:] == sorted(tuned[2:], reverse=True) and 0 < tuned[-1] < 0.001
    features = lr_schedule(TrainConfig(epochs=2, freeze_epochs=1, mode="features"), 256)
    assert {s.phase for s in features} == {"features"}  # no frozen phase: the head alone


@contextmanager
def _rate_of_every_step():
    """The base rate (the head's group, as training logs it) of every optimizer step taken."""
    seen: list[float] = []
    hook = register_optimizer_step_pre_hook(lambda opt, *_: seen.append(opt.param_groups[-1]["lr"]))
    try:
        yield seen
    finally:
        hook.remove()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_cifar100_archive(
        tmp_path_factory.mktemp("data") / "c100.tar.gz", n_train=160, n_test=20
    )


def _check_against_the_run(run_dir, taken: list[float]):
    records = runs.read_metrics(run_dir / runs.METRICS)
    cfg = runs.read_run_config(run_dir)
    schedule = lr_schedule(cfg.train, records[0]["train_images"])
    assert taken == [s.lr for s in schedule]  # every step, exactly, in order
    steps = len(schedule) // cfg.train.epochs
    logged = [(r["phase"], r["lr"]) for r in records]
    assert logged == [(schedule[r["epoch"] * steps - 1].phase, schedule[r["epoch"] * steps - 1].lr)
                      for r in records]  # fmt: skip
    return records, schedule, steps


@pytest.mark.slow
def test_schedule_is_what_fine_tuning_set_at_every_step(archive, tmp_path, monkeypatch):
    from cifar100 import plots
    from cifar100.models import registry
    from cifar100.plots.training import PHASE_LABELS

    # Random weights stand in for the pretrained ones, to have a frozen phase at all.
    monkeypatch.setattr(registry, "load_backbone_weights", lambda *a, **k: None)
    cfg = apply_overrides(
        load_preset("seed"),
        [f"data.path={archive}", "model.backbone=efficientnet_lite0", "model.resize=1",
         "train.epochs=3", "train.freeze_epochs=1", "train.batch_size=32", "train.accumulate=2",
         "train.warmup_epochs=0.5", "train.eval_batch_size=64", "train.amp=false"],
    )  # fmt: skip
    with _rate_of_every_step() as taken:
        train(cfg, out=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    records, schedule, steps = _check_against_the_run(tmp_path / "run", taken)
    images = records[0]["train_images"]
    assert images % 32 and steps == images // 32  # the partial batch is no step
    assert [s.phase for s in schedule] == ["frozen"] * steps + ["finetune"] * 2 * steps
    # The figure draws every step, a line per phase, and the logged rates as dots.
    fig = plots.plot_lr(records, plots.run_schedule(tmp_path / "run", records))
    lines = fig.axes[0].get_lines()
    drawn = [line for line in lines if line.get_linestyle() == "-"]
    assert sum(len(line.get_xdata()) for line in drawn) == len(schedule)
    assert [line.get_label() for line in drawn] == [PHASE_LABELS[p] for p in ("frozen", "finetune")]
    dots = next(line for line in lines if line.get_label() == "logged at epoch end")
    assert list(dots.get_xdata()) == [1, 2, 3]


@pytest.mark.slow
def test_schedule_is_what_features_mode_set_at_every_step(archive, tmp_path):
    cfg = apply_overrides(
        load_preset("scratch"),
        [f"data.path={archive}", "train.mode=features", "train.epochs=3", "train.batch_size=32",
         "train.warmup_epochs=0.5"],
    )  # fmt: skip
    with _rate_of_every_step() as taken:
        train(cfg, out=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    _, schedule, steps = _check_against_the_run(tmp_path / "run", taken)
    assert {s.phase for s in schedule} == {"features"} and steps > 4  # flipped rows: 2 x images
