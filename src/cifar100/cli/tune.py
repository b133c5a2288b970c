"""`cifar100 tune`: hyper-parameter search over a preset or config file (cifar100.tune)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cifar100.cli.args import add_common, at_least
from cifar100.cli.settings_flags import (
    SETTING_FLAGS,
    add_config_source,
    add_setting_flags,
    resolve_config,
)
from cifar100.cli.threads import use_free_cores
from cifar100.display_text import visible
from cifar100.errors import CifarError

HELP = "search hyper-parameters with Optuna (trials are run directories)"
DESCRIPTION = (
    "Search settings with Optuna's TPE sampler, maximizing each trial's validation top-1 (of "
    "the weights it tests: its last epoch's, its best epoch's after early stopping), pruning "
    "trials on their per-epoch validation top-1. Every trial is a run directory "
    "(OUT/trial-NNNN); the study lives in OUT/study.db (or --storage: any SQLAlchemy URL), so "
    "several processes or machines run one study together: --trials is the study's total. "
    "Writes OUT/best.toml (for `cifar100 train --config`) and OUT/study.html."
)
PRUNERS = ("median", "hyperband", "none")  # cifar100.tune.study.make_pruner


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_source(p)
    add_setting_flags(p, [k for k in SETTING_FLAGS if k != "model.init"])
    p.add_argument("--space", metavar="FILE",
                   help='the search space, TOML: train.lr = {low = 1e-4, high = 0.1, log = true}, '
                   'train.finetune_bn = {choices = ["batch", "frozen"]}')  # fmt: skip
    p.add_argument("--trials", type=at_least(1), metavar="N",
                   help="the study's total trials, all workers together")  # fmt: skip
    p.add_argument("--out", metavar="DIR", help="trials, study.db, best.toml, study.html "
                   "(default: runs/tune-<preset>)")  # fmt: skip
    p.add_argument("--storage", metavar="URL", help="Optuna storage, any SQLAlchemy URL, e.g. "
                   "postgresql://user@host/db (default: sqlite:///OUT/study.db)")  # fmt: skip
    p.add_argument("--study", metavar="NAME", help="study name, shared by the workers (default: "
                   "<out folder>-<preset>)")  # fmt: skip
    p.add_argument("--pruner", choices=PRUNERS, default="median",
                   help="stop poor trials early on validation top-1 (default: median)")  # fmt: skip
    p.add_argument("--report", action="store_true",
                   help="only (re)write OUT/study.html for the study as it stands")  # fmt: skip
    add_common(p)


def run(args: argparse.Namespace) -> int:
    try:
        # Imported here, not above: Optuna and the engine (torch) load slowly, and Optuna is an
        # optional dependency.
        from cifar100.tune.space import load_space
        from cifar100.tune.study import report_study, tune
    except ImportError as e:
        needs = "pip install 'cifar100[tune]'"
        raise CifarError(f"cifar100 tune needs Optuna ({e}): {needs}") from None
    import optuna  # installed (above); its INFO lines repeat what the search prints

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.report:
        if not (args.out or args.storage):
            raise CifarError("--report needs the search's --out DIR (or its --storage URL)")
        page = report_study(Path(args.out or "."), args.storage, args.study)
        print(visible(f"wrote {page}"))
        return 0
    if not args.space or not args.trials:
        raise CifarError("give --space FILE and --trials N (or --report for the page alone)")
    space = load_space(args.space)
    cfg = resolve_config(args)
    out = Path(args.out or f"runs/tune-{cfg.preset}")
    use_free_cores(say=True)
    result = tune(cfg, space, args.trials, out, storage=args.storage, study_name=args.study,
                  pruner=args.pruner, cache_dir=args.cache_dir,
                  progress=not args.no_progress)  # fmt: skip
    for line in summary_lines(result):
        print(visible(line))
    return 130 if result.stopped else 0


def summary_lines(result) -> list[str]:
    states = ", ".join(f"{n} {s.lower()}" for s, n in result.states.items())
    lines = [f"study {result.study_name} ({result.storage}): {states}"]
    if result.best_number is not None:
        lines.append(f"best: trial {result.best_number}, validation top-1 "
                     f"{result.best_value:.2%}: {result.best_params}")  # fmt: skip
        lines.append(f"its settings: {result.best_config} "
                     f"(cifar100 train --config {result.best_config})")  # fmt: skip
    if result.stopped:
        lines.append("stopped by a signal: the trial it stopped is marked failed and queued "
                     "again; run the same command to go on with the study")  # fmt: skip
    lines.append(f"page: {result.page}")
    return lines
