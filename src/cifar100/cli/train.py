"""`cifar100 train`: a preset or config file, the setting flags over it, into a run directory."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cifar100.cli.args import DEVICE_HELP, add_common
from cifar100.cli.settings_flags import (
    SETTING_FLAGS,
    add_config_source,
    add_setting_flags,
    given_flags,
    preset_default,
    resolve_config,
)
from cifar100.cli.threads import use_free_cores
from cifar100.config import apply_overrides
from cifar100.errors import CifarError
from cifar100.runtime.run_dir import RunDir, recorded_threads
from cifar100.tracking import track_settings

HELP = "train a model (a preset, a config file, overrides)"
NO_ESTIMATE_ENV = "CIFAR100_NO_ESTIMATE"  # set (to anything): as --no-estimate
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
        "--track",
        action="append",
        default=[],
        metavar="TARGET",
        help="log the run as it trains to mlflow (a store in the runs root, RUNS_ROOT/mlflow.db), "
        "mlflow=URI (a tracking server) or tensorboard (event files in the run directory); "
        "repeat for several (the [track] settings)",
    )
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint"
    )
    p.add_argument(
        "--no-estimate",
        action="store_true",
        help="start at once, without first timing a few steps to say how long the run will "
        f"take (default: time them, unless ${NO_ESTIMATE_ENV} is set)",
    )
    device_help = f"{DEVICE_HELP} (train.device; default: {preset_default('train.device', None)})"
    add_common(p, device_help=device_help)


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the engine loads torch.
    from cifar100.engine.train import train

    if args.resume:
        given = given_flags(args) + (["--track"] if args.track else [])
        if given or args.set:
            raise CifarError(
                "--resume continues a run with its saved config; drop "
                f"{', '.join(given) or '--set'}"
            )
        # The run's own thread count, so that it goes on computing exactly as it began.
        use_free_cores(keep=recorded_threads(Path(args.resume)), say=True)
        result = train(resume=args.resume, cache_dir=args.cache_dir, progress=not args.no_progress)
        return _exit_code(result)
    cfg = apply_overrides(resolve_config(args), track_settings(args.track))
    if args.out:
        check_not_finished(Path(args.out))
    use_free_cores(say=True)
    estimate = not (args.no_estimate or os.environ.get(NO_ESTIMATE_ENV)) and single_process()
    result = train(
        cfg,
        out=args.out,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        runs_root=args.runs_root,
        # once the data and model are set up (a bad input is its one error line, at once)
        before_epochs=say_estimate if estimate else None,
    )
    return _exit_code(result)


def single_process() -> bool:
    """Not one of torchrun's processes (each would time the model on its own)."""
    return os.environ.get("WORLD_SIZE", "1") == "1"


def check_not_finished(out: Path) -> None:
    """A finished run at --out: resuming it would only test it again, so say what does help.
    (An unfinished one is refused by the engine, which says to resume it.)"""
    run = RunDir(out)
    if not (run.evaluation.is_file() and run.is_run()):
        return
    try:
        epochs = run.read_config().train.epochs
    except CifarError:
        return  # a damaged config: the engine's refusal names the run all the same
    if max((m.get("epoch", 0) for m in run.read_metrics()), default=0) >= epochs:
        raise CifarError(
            f"run directory {out} holds a finished run (its test evaluation is written): choose "
            f"another --out for a new run; `cifar100 evaluate {out}` tests it again"
        )


def say_estimate(cfg) -> None:
    """Print how long the run should take here, timed now; never stops the run from starting."""
    # Imported here, not above, to keep the CLI's start fast: the estimate loads torch.
    from cifar100.config import validate
    from cifar100.engine.estimate import estimate_lines, estimate_run, time_steps
    from cifar100.runtime.device import select_device

    try:
        validate(cfg)
        times = time_steps(cfg, select_device(cfg.train.device))
    except CifarError:
        return  # the run itself says what is wrong, in its own words
    except Exception as e:  # noqa: BLE001 - an estimate that fails must not stop the run
        print(f"note: no time estimate ({type(e).__name__}: {e})", file=sys.stderr)
        return
    for line in estimate_lines(estimate_run(cfg, times), cfg.preset):
        print(line, file=sys.stderr)


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
