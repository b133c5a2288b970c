"""Measure `cifar100 tune` on real data: what a search finds and what pruning saves.

    flock /tmp/s10/heavy.lock python benchmarks/tune_measure.py \
        --data /tmp/s8/data/cifar10-jpeg --cache-dir /tmp/s9/cache --out /tmp/s10/tune/measure

1. head: the `cpu` preset's own recipe (the baseline, trained here, in the same session), then
   a search of --head-trials trials over its head settings (lr, weight decay, label
   smoothing, dropout, head units, epochs) on its cached 96-px EfficientNet-Lite0 features; the best
   trial (by validation top-1) is compared with the baseline on the test split.
2. prune: a short search over `cpu-finetune`'s train.lr and train.label_smoothing on 5,000
   training images, median pruning: how many trials were pruned, and how long they took
   against what complete trials took.

Prints the machine, versions, the load from other processes, times and numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from cifar100.config import apply_overrides, load_preset
from cifar100.cpu_threads import fit_threads
from cifar100.engine.train import train
from cifar100.runtime.evaluation import Evaluation
from cifar100.runtime.run_dir import RunDir
from cifar100.tune import parse_space, tune
from cifar100.tune.storage import open_storage, storage_url

HEAD_SPACE = {
    "train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "train.weight_decay": {"low": 1e-3, "high": 0.3, "log": True},
    "train.label_smoothing": {"low": 0.0, "high": 0.2},
    "model.dropout": {"low": 0.0, "high": 0.5},
    "model.head_units": {"choices": [128, 256, 512]},
    "train.epochs": {"choices": [5, 10, 15, 20]},  # the preset trains 30: fewer keep it short
}
FINETUNE_SPACE = {
    "train.lr": {"low": 1e-3, "high": 0.2, "log": True},
    "train.label_smoothing": {"low": 0.0, "high": 0.2},
}


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; Python "
        f"{platform.python_version()}, torch {torch.__version__}, optuna {optuna.__version__}"
    )


def data_settings(args: argparse.Namespace) -> list[str]:
    return ["data.dataset=folder", f"data.path={args.data}", "train.device=cpu"]


def head_part(args: argparse.Namespace) -> None:
    cfg = apply_overrides(load_preset("cpu"), data_settings(args))
    if args.baseline:  # a baseline run trained before, on this machine
        base_top1 = Evaluation.read(RunDir(args.baseline).evaluation).top1
        print(f"[head] baseline cpu preset ({args.baseline}): test top-1 {base_top1:.2%}")
    else:
        start = time.perf_counter()
        base = train(cfg, out=args.out / "head-baseline", cache_dir=args.cache_dir, progress=False)
        base_top1 = base.test["top1"]
        print(f"[head] baseline cpu preset: test top-1 {base_top1:.2%}, "
              f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    start = time.perf_counter()
    result = tune(cfg, parse_space(HEAD_SPACE), args.head_trials, args.out / "head",
                  cache_dir=args.cache_dir)  # fmt: skip
    search_s = time.perf_counter() - start
    study = load(args.out / "head")
    best = study.trials[result.best_number]
    print(f"[head] {args.head_trials} trials in {search_s:.0f} s: {result.states}")
    print(f"[head] best trial {best.number}: validation top-1 {best.value:.2%}, test top-1 "
          f"{best.user_attrs['test_top1']:.2%} (baseline {base_top1:.2%}): "
          f"{best.params}")  # fmt: skip
    durations(study, "head")


def prune_part(args: argparse.Namespace) -> None:
    limits = ["data.limit_train=5000", f"data.limit_test={args.limit_test}"]
    cfg = apply_overrides(load_preset("cpu-finetune"), [*data_settings(args), *limits])
    start = time.perf_counter()
    result = tune(cfg, parse_space(FINETUNE_SPACE), args.prune_trials, args.out / "prune",
                  cache_dir=args.cache_dir)  # fmt: skip
    print(f"[prune] {args.prune_trials} trials in {time.perf_counter() - start:.0f} s: "
          f"{result.states}; best trial {result.best_number}: validation top-1 "
          f"{result.best_value:.2%} {result.best_params}")  # fmt: skip
    durations(load(args.out / "prune"), "prune")


def load(out: Path) -> optuna.Study:
    storage = open_storage(storage_url(None, out))
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def durations(study: optuna.Study, part: str) -> None:
    """Each trial's time; pruned ones against what a complete one takes."""
    by_state: dict[TrialState, list[float]] = {}
    for t in study.trials:
        if t.datetime_complete and t.datetime_start:
            seconds = (t.datetime_complete - t.datetime_start).total_seconds()
            by_state.setdefault(t.state, []).append(seconds)
            value = "" if t.value is None else f"{t.value:.2%}"
            epochs, test = len(t.intermediate_values), t.user_attrs.get("test_top1")
            test = "" if test is None else f"test {test:.2%}"
            print(f"[{part}] trial {t.number:>2} {t.state.name:<8} {seconds:6.1f} s "
                  f"{epochs} epochs {value:>7} {test}")  # fmt: skip
    full, pruned = by_state.get(TrialState.COMPLETE, []), by_state.get(TrialState.PRUNED, [])
    if full:
        mean = sum(full) / len(full)
        print(f"[{part}] complete: {len(full)}, {sum(full):.0f} s, mean {mean:.1f} s")
        if pruned:
            saved = len(pruned) * mean - sum(pruned)
            print(f"[{part}] pruned: {len(pruned)}, {sum(pruned):.0f} s; as complete trials "
                  f"they would have taken ~{len(pruned) * mean:.0f} s: ~{saved:.0f} s saved "
                  f"({saved / (sum(full) + sum(pruned) + saved):.0%} of the search)")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--data", required=True, help="CIFAR-10 JPEGs: train/ and test/ folders")
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--out", type=Path, required=True, help="a new folder for the runs")
    p.add_argument("--part", choices=("head", "prune", "all"), default="all")
    p.add_argument("--head-trials", type=int, default=30)
    p.add_argument("--prune-trials", type=int, default=10)
    p.add_argument("--baseline", metavar="RUN_DIR", help="the cpu preset's run, trained before")
    p.add_argument("--limit-test", type=int, default=2000, help="test images per prune trial")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    threads = fit_threads()
    print(f"machine: {machine()}; {threads} torch threads")
    start = time.perf_counter()
    if args.part in ("head", "all"):
        head_part(args)
    if args.part in ("prune", "all"):
        prune_part(args)
    print(f"total {time.perf_counter() - start:.0f} s; at the end: {machine()}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
