"""`cifar100 train`: a preset or config file, the setting flags over it, into a run directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifar100.cli.args import add_common
from cifar100.cli.settings_flags import (
    SETTING_FLAGS,
    add_config_source,
    add_setting_flags,
    given_flags,
    resolve_config,
)
from cifar100.cli.threads import use_free_cores
from cifar100.errors import CifarError
from cifar100.runtime.run_dir import RunDir, recorded_threads

HELP = "train a model (a preset, a config file, overrides)"
DESCRIPTION = (
    "Train a classifier into a run directory holding its config, environment, metrics log "
    "and checkpoints."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_source(p)
    add_setting_flags(p, [k for k in SETTING_FLAGS if k != "model.init"])  # init: below
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<time>-<preset>)")
    p.add_argument(
        "--runs-root",
        default="runs",
        metavar="DIR",
        help="where new run directories go (default: ./runs)",
    )
    add_setting_flags(p, ["model.init"])
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint"
    )
    add_common(p)


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the engine loads torch.
    from cifar100.engine.train import train

    if args.resume:
        given = given_flags(args)
        if given or args.set:
            raise CifarError(
                "--resume continues a run with its saved config; drop "
                f"{', '.join(given) or '--set'}"
            )
        # The run's own thread count, so that it goes on computing exactly as it began.
        use_free_cores(keep=recorded_threads(Path(args.resume)), say=True)
        result = train(resume=args.resume, cache_dir=args.cache_dir, progress=not args.no_progress)
        return _exit_code(result)
    cfg = resolve_config(args)
    use_free_cores(say=True)
    result = train(
        cfg,
        out=args.out,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        runs_root=args.runs_root,
    )
    return _exit_code(result)


def _exit_code(result) -> int:
    """0 for a finished run; for one a signal stopped, where it stands and how to go on."""
    if result.stopped is None or not result.stopped.startswith(("SIG", "a signal")):
        return 0
    print(
        f"stopped by {result.stopped}: saved at {result.saved_at} in "
        f"{RunDir(result.run_dir).last}; continue with: cifar100 train --resume {result.run_dir}",
        file=sys.stderr,
    )
    return 143 if result.stopped == "SIGTERM" else 130
