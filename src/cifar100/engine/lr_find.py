"""The learning-rate range test: a few hundred training steps at exponentially rising rates,
the smoothed loss against the rate, and a suggested rate (Smith 2015; fastai's lr_find).

    result = find_lr(load_preset("cpu-finetune"))       # cifar100 lr-find --preset cpu-finetune
    result.suggestion, result.setting                    # 0.0123, "train.lr"

It builds the data and model exactly as a run's first epoch finds them (pretrained backbone,
new head: as fastai runs lr_find on a freshly built learner), takes the phase's real training
step, and puts every weight back afterwards. It writes no run directory; save_result writes
lr_find.json and the figure where asked.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from cifar100.config import Config, validate
from cifar100.engine.distributed import DistInfo
from cifar100.engine.lr_range import (
    RULE,
    RULE_TEXT,
    RangeLosses,
    exponential_rates,
    range_losses,
    suggestions,
)
from cifar100.engine.lr_steps import (
    features_step,
    finetune_step,
    train_frozen_epochs,
    weights_restored,
)
from cifar100.engine.run import Run
from cifar100.engine.train import data_and_model
from cifar100.errors import ConfigError
from cifar100.fileio import write_json_atomic
from cifar100.paths import resolve_cache_dir
from cifar100.plots.figure import save_figure
from cifar100.plots.lr_find import lr_find_figure
from cifar100.runtime.device import environment_info, select_device

PHASES = ("finetune", "head")
STEPS, START_LR, END_LR = 100, 1e-7, 10.0  # fastai's defaults
JSON_NAME, FIGURE_NAME = "lr_find.json", "lr_find"  # the figure: .png and .svg


@dataclass
class LrFindResult:
    """One range test: the rates and losses, both rules' rates, and which one is suggested."""

    phase: str  # "finetune" or "head"
    setting: str  # the setting the suggestion is for: train.lr or train.head_lr
    lrs: list[float]
    losses: list[float]  # raw, one per step (NaN where not finite)
    smoothed: list[float]
    stopped: str  # "finished", "diverged" or "not finite"
    suggestion: float | None  # the RULE's rate; None where the loss never fell
    rates: dict[str, float | None]  # every rule's rate, by name
    steps: int  # steps planned (len(lrs) were taken)
    after_frozen: bool  # the frozen-backbone epochs were trained first
    start_lr: float
    end_lr: float
    batch_size: int
    seconds: float
    config: Config
    machine: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        def finite(v: float) -> float | None:  # JSON has no NaN
            return v if math.isfinite(v) else None

        return {
            "phase": self.phase,
            "setting": self.setting,
            "suggestion": self.suggestion,
            "rule": RULE,
            "rule_text": RULE_TEXT,
            "rates": self.rates,
            "stopped": self.stopped,
            "steps_planned": self.steps,
            "after_frozen": self.after_frozen,
            "steps_taken": len(self.lrs),
            "start_lr": self.start_lr,
            "end_lr": self.end_lr,
            "batch_size": self.batch_size,
            "seconds": round(self.seconds, 2),
            "lrs": self.lrs,
            "losses": [finite(v) for v in self.losses],
            "smoothed": self.smoothed,
            "config": self.config.to_dict(),
            "machine": self.machine,
        }


def default_phase(cfg: Config) -> str:
    """finetune for fine-tuning presets, head for features mode (its only phase)."""
    return "head" if cfg.train.mode == "features" else "finetune"


def setting_for(cfg: Config, phase: str) -> str:
    """The setting the phase's rate is: the head's own rate while the backbone is frozen."""
    return "train.head_lr" if phase == "head" and cfg.train.mode != "features" else "train.lr"


def check_request(
    cfg: Config, phase: str, steps: int, start_lr: float, end_lr: float, after_frozen: bool = False
) -> None:
    """Refuse what cannot be run (one line each), before any data is read."""
    if phase not in PHASES:
        raise ConfigError(f"phase {phase!r}: choose {' or '.join(PHASES)}")
    if phase == "finetune" and cfg.train.mode == "features":
        raise ConfigError(
            "train.mode=features trains the head alone on frozen features: use --phase head"
        )
    if phase == "head" and cfg.train.mode != "features" and cfg.train.freeze_epochs == 0:
        raise ConfigError(
            "train.freeze_epochs=0: this config has no frozen-backbone phase to find a head "
            "rate for; use --phase finetune (or set train.freeze_epochs)"
        )
    if after_frozen and (phase != "finetune" or cfg.train.freeze_epochs == 0):
        raise ConfigError(
            "--after-frozen trains the frozen-backbone epochs before the fine-tuning phase's "
            f"test: it needs --phase finetune and train.freeze_epochs > 0 (here {phase}, "
            f"{cfg.train.freeze_epochs})"
        )
    if not (math.isfinite(start_lr) and math.isfinite(end_lr) and 0 < start_lr < end_lr):
        raise ConfigError(f"--start-lr {start_lr:g} --end-lr {end_lr:g}: need 0 < start < end")
    if steps < 10:
        raise ConfigError(f"--steps {steps}: at least 10 steps are needed to read a curve")


def find_lr(
    cfg: Config,
    phase: str | None = None,
    steps: int = STEPS,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
    after_frozen: bool = False,
) -> LrFindResult:
    """Run the range test of `cfg`'s `phase` (default: default_phase) on its training data;
    `after_frozen`: the fine-tuning phase's test after the config's frozen epochs (trained
    first, as a run trains them), not from the new head."""
    phase = phase or default_phase(cfg)
    validate(cfg)
    check_request(cfg, phase, steps, start_lr, end_lr, after_frozen)
    device = select_device(cfg.train.device)
    cache = resolve_cache_dir(cache_dir)
    splits, train_set, val_set, model = data_and_model(cfg, device, cache, progress, say)
    if phase == "head" and cfg.train.mode != "features" and cfg.train.freeze_epochs == 0:
        raise ConfigError(  # weights=none turned the frozen epochs off
            f"model.weights={cfg.model.weights}: no frozen-backbone phase; use --phase finetune"
        )
    # No run directory and no ModelInfo: nothing is saved, nothing leaves this function.
    run = Run(cfg, None, device, DistInfo(), splits, train_set, val_set, model, None, cache, say)
    say(
        f"lr-find: {cfg.preset}, phase {phase} ({setting_for(cfg, phase)}), {steps} steps of "
        f"{cfg.train.batch_size} images from {start_lr:g} to {end_lr:g}, on {len(train_set)} "
        f"training images of {splits.name}, {device}"
    )
    started = time.perf_counter()
    after_frozen = after_frozen and cfg.train.freeze_epochs > 0  # weights=none: none to train
    rates = exponential_rates(start_lr, end_lr, steps)
    losses = range_test(run, phase, rates, progress, after_frozen)
    found = suggestions(losses.lrs, losses.smoothed)
    return LrFindResult(
        phase, setting_for(cfg, phase), losses.lrs, losses.raw, losses.smoothed, losses.stopped,
        found[RULE], found, steps, after_frozen, start_lr, end_lr, cfg.train.batch_size,
        time.perf_counter() - started, cfg, environment_info(device),
    )  # fmt: skip


def range_test(
    run: Run, phase: str, rates: list[float], progress: bool = False, after_frozen: bool = False
) -> RangeLosses:
    """The steps of `phase` at `rates` on `run`'s model (after its frozen epochs where asked),
    which is left exactly as it was."""
    with weights_restored(run.model):
        if after_frozen:
            steps = train_frozen_epochs(run)
            run.say(f"lr-find: trained the head first: {steps} frozen-backbone steps")
        if run.cfg.train.mode == "features":
            step = features_step(run, progress)
        else:
            step = finetune_step(run, "frozen" if phase == "head" else "finetune")
        bar = tqdm(total=len(rates), desc="lr-find", unit="step", leave=False,
                   disable=not progress, dynamic_ncols=True, file=sys.stderr)  # fmt: skip

        def shown(lr: float) -> float:
            loss = step(lr)
            bar.update(1)
            bar.set_postfix(lr=f"{lr:.2e}", loss=f"{loss:.4f}")
            return loss

        try:
            return range_losses(shown, rates)
        finally:
            bar.close()


def save_result(result: LrFindResult, out: str | Path) -> list[Path]:
    """lr_find.png and .svg, then lr_find.json (the record, last), each written atomically."""
    out = Path(out)
    fig = lr_find_figure(
        result.lrs, result.losses, result.smoothed, result.suggestion, result.rates,
        result.setting, f"{result.config.preset}, phase {result.phase}",
    )  # fmt: skip
    written = save_figure(fig, out / FIGURE_NAME)
    write_json_atomic(out / JSON_NAME, result.to_json())
    return [*written, out / JSON_NAME]


def default_out(runs_root: str | Path, preset: str) -> Path:
    """runs/lr-find-<date>-<time>-<preset>, made unique."""
    base = Path(runs_root) / f"lr-find-{time.strftime('%Y%m%d-%H%M%S')}-{preset}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path
