"""`cifar100 lr-find`, the learning-rate range test: its rates, smoothing and stop (pure
functions on made-up curves), the suggestion rules on a curve whose answer is known, every
weight put back after real training steps, and the command end to end on synthetic CIFAR-10.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cifar100 import cli
from cifar100.config import apply_overrides, load_preset
from cifar100.engine import lr_find as lr_find_module
from cifar100.engine.distributed import DistInfo
from cifar100.engine.lr_find import range_test
from cifar100.engine.lr_range import (
    exponential_rates,
    range_losses,
    steepest,
    suggestions,
    valley,
)
from cifar100.engine.lr_steps import finetune_step, weights_restored
from cifar100.engine.run import Run
from cifar100.engine.train import data_and_model
from synthetic_cifar import make_cifar10_archive
from tiny_run import SMALL

# --- the arithmetic, on made-up curves -------------------------------------------------------


def test_the_rates_rise_exponentially_from_start_to_end():
    rates = exponential_rates(1e-6, 1.0, 61)
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1.0)
    ratios = np.asarray(rates[1:]) / np.asarray(rates[:-1])
    assert np.allclose(ratios, 10 ** (6 / 60))  # the same factor every step: 10 steps a decade


def test_the_smoothed_loss_is_bias_corrected():
    out = range_losses(lambda lr: 2.5, exponential_rates(1e-5, 1e-1, 20))
    assert out.stopped == "finished" and len(out.lrs) == 20
    assert out.smoothed == pytest.approx([2.5] * 20)  # no pull towards 0 at the start


def test_the_test_stops_once_the_smoothed_loss_explodes():
    calls = []

    def step(lr: float) -> float:  # flat, then growing as the rate passes 0.01
        calls.append(lr)
        return 1.0 if lr < 1e-2 else 1.0 + (lr / 1e-2) ** 3

    rates = exponential_rates(1e-5, 10.0, 100)
    out = range_losses(step, rates)
    assert out.stopped == "diverged"
    assert len(calls) == len(out.lrs) < 100  # not one step after the stop
    assert out.smoothed[-1] > 4 * min(out.smoothed)
    assert max(out.smoothed[:-1]) <= 4 * min(out.smoothed)  # the first point past 4x


def test_the_test_stops_at_a_loss_that_is_not_finite():
    out = range_losses(lambda lr: math.nan if lr > 1e-3 else 2.0, exponential_rates(1e-5, 1, 50))
    assert out.stopped == "not finite"
    assert math.isnan(out.raw[-1]) and len(out.smoothed) == len(out.raw) - 1


def test_the_rules_find_the_known_points_of_a_curve():
    """Flat, then a tanh fall centred on lr 1e-3 (log10 -3), its minimum at 10^-1.02, then a
    steep rise: steepest is 1e-3; valley is half-way along the fall."""
    x = -6 + 0.06 * np.arange(101)  # log10 of the rate
    y = np.where(x <= -1.01, -np.tanh((x + 3) / 0.5), -np.tanh(2 / 0.5) + 20 * (x + 1.02))
    lrs, smoothed = list(10**x), list(y)
    assert steepest(lrs, smoothed) == pytest.approx(1e-3)
    # Rule by hand: the first tenth (10 points) and the last 5 are left out; the fall runs from
    # index 10 to 83 (its minimum), 73 steps: 10 + int(73/3) + int(73/3/2) = 46.
    assert valley(lrs, smoothed) == pytest.approx(lrs[46])
    assert lrs[10] < lrs[46] < steepest(lrs, smoothed)  # on the fall, before its steepest point


def test_a_loss_that_never_falls_gives_no_suggestion():
    lrs = exponential_rates(1e-4, 1.0, 30)
    assert suggestions(lrs, [1.0 + i for i in range(30)]) == {"valley": None, "steepest": None}


# --- real steps on a tiny model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_cifar10_archive(tmp_path_factory.mktemp("lrfind") / "c10.tar.gz", 96, 32)


def _tiny_run(archive, cache) -> Run:
    """efficientnet_lite0 from scratch at 32x32 (tiny_run's SMALL), with batch-norm momentum
    that moves the running statistics visibly in a few steps."""
    cfg = apply_overrides(
        load_preset("scratch"),
        ["data.dataset=cifar10", f"data.path={archive}", "model.backbone=efficientnet_lite0",
         "model.resize=1", "train.batch_size=16"],
    )  # fmt: skip
    splits, train_set, val_set, model = data_and_model(
        cfg, torch.device("cpu"), cache, False, print
    )
    return Run(cfg, None, torch.device("cpu"), DistInfo(), splits, train_set, val_set, model,
               None, cache, print)  # fmt: skip


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_every_weight_and_the_random_state_come_back_exactly(archive, tmp_path):
    run = _tiny_run(archive, tmp_path / "cache")
    model = run.model
    model.eval()
    before, rng = _snapshot(model), torch.get_rng_state()
    trains = {n: p.requires_grad for n, p in model.named_parameters()}
    with weights_restored(model):  # the steps do change the weights and statistics ...
        step = finetune_step(run, "finetune")
        assert math.isfinite(step(0.05))
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        assert any("running_mean" in k for k in changed) and any("weight" in k for k in changed)
    assert _same(_snapshot(model), before)  # ... and all are back, bit for bit
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == trains
    # The whole range test too, the head phase (frozen backbone) included, and a Ctrl-C.
    out = range_test(run, "finetune", exponential_rates(1e-4, 1.0, 3))
    assert len(out.lrs) >= 1 and _same(_snapshot(model), before)
    run.cfg.train.freeze_epochs = 1  # weights=none turned it off; the frozen step still runs
    range_test(run, "head", exponential_rates(1e-4, 1.0, 2))
    assert _same(_snapshot(model), before)
    run.cfg.train.batch_size = len(run.train_set) // 2  # the frozen epoch in 2 steps
    range_test(run, "finetune", exponential_rates(1e-4, 1.0, 2), after_frozen=True)
    assert _same(_snapshot(model), before)

    def interrupted(lr: float) -> float:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), weights_restored(model):
        finetune_step(run, "finetune")(0.1)
        interrupted(0.1)
    assert _same(_snapshot(model), before) and torch.equal(torch.get_rng_state(), rng)


# --- the command --------------------------------------------------------------------------------


@pytest.mark.slow
def test_lr_find_writes_its_curve_and_prints_the_train_command(archive, tmp_path, capsys):
    out = tmp_path / "found"
    argv = ["lr-find", *SMALL, "--set", "train.batch_size=16", "--data", str(archive), "--out",
            str(out), "--steps", "10", "--start-lr", "1e-4", "--end-lr", "10",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "lr_find.json").read_text())
    assert (out / "lr_find.png").stat().st_size > 1000
    assert record["phase"] == "finetune" and record["setting"] == "train.lr"
    assert record["rule"] == "valley" and record["suggestion"] == record["rates"]["valley"]
    assert 1e-4 <= record["suggestion"] <= 10 and set(record["rates"]) == {"valley", "steepest"}
    assert record["after_frozen"] is False  # from the new head, unless --after-frozen
    assert record["steps_planned"] == 10 and record["steps_taken"] == len(record["lrs"])
    assert len(record["losses"]) == record["steps_taken"] > 0
    assert record["config"]["model"]["backbone"] == "efficientnet_lite0"
    assert record["machine"]["torch"] == torch.__version__
    value = f"{record['suggestion']:.3g}"
    assert f"suggested train.lr={value}" in printed
    assert "use it: cifar100 train --preset scratch" in printed
    assert printed.rstrip().endswith(f"--set train.lr={value}")
    assert not list(tmp_path.glob("runs*"))  # no run directory anywhere


@pytest.mark.slow
def test_head_phase_of_a_features_preset(archive, tmp_path, capsys):
    out = tmp_path / "head"
    argv = ["lr-find", "--preset", "cpu", "--dataset", "cifar10", "--data", str(archive),
            "--set", "model.resize=1", "--set", "train.batch_size=32", "--no-progress",
            "--steps", "20", "--start-lr", "1e-5", "--end-lr", "10", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert cli.main(argv) == 0
    record = json.loads((out / "lr_find.json").read_text())
    assert record["phase"] == "head" and record["setting"] == "train.lr"
    assert record["config"]["train"]["mode"] == "features"
    assert "suggested train.lr=" in capsys.readouterr().out
    assert list((tmp_path / "cache" / "features").glob("*.pt"))  # through the feature cache


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--set", "train.lr=fast"], "train.lr"),
        (["--set", "train.no_such=1"], "no_such"),
        (["--preset", "cpu", "--phase", "finetune"], "--phase head"),
        (["--start-lr", "1", "--end-lr", "0.1"], "need 0 < start < end"),
        (["--phase", "head"], "freeze_epochs=0"),  # scratch has no frozen phase
        (["--after-frozen"], "--after-frozen"),  # nor frozen epochs to train first
    ],
)
def test_bad_input_is_one_line_and_exit_2(extra, says, tmp_path, capsys):
    preset = [] if "--preset" in extra else ["--preset", "scratch"]
    argv = ["lr-find", *preset, *extra, "--out", str(tmp_path / "x"), "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cifar100 lr-find: error:") and says in err[0]
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_writes_nothing(archive, tmp_path, capsys, monkeypatch):
    def three_steps_then_ctrl_c(step, rates, **kwargs):
        for lr in rates[:1]:
            step(lr)
        raise KeyboardInterrupt

    monkeypatch.setattr(lr_find_module, "range_losses", three_steps_then_ctrl_c)
    out = tmp_path / "stopped"
    argv = ["lr-find", *SMALL, "--set", "train.batch_size=16", "--data", str(archive), "--out",
            str(out), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert cli.main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
