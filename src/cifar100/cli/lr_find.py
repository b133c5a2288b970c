"""`cifar100 lr-find`: the learning-rate range test of a preset or config, and the rate it
suggests, with the train command that uses it."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from cifar100.cli.args import DEVICE_HELP, add_common, at_least
from cifar100.cli.settings_flags import (
    SETTING_FLAGS,
    add_config_source,
    add_setting_flags,
    preset_default,
    resolve_config,
)
from cifar100.cli.threads import use_free_cores
from cifar100.config import setting_kind

HELP = "find a learning rate: the range test (loss against exponentially rising rates)"
# Written out here, not imported from the engine: the CLI starts without loading torch.
RULE_HELP = (
    "the suggestion is fastai's valley rule: the longest stretch over which the smoothed loss "
    "keeps falling, and the rate half-way along it (the steepest-fall rate is recorded beside it)"
)
DESCRIPTION = (
    "The learning-rate range test (Smith 2015, fastai's lr_find): --steps training steps of the "
    "preset's own recipe at rates rising exponentially from --start-lr to --end-lr, stopping "
    "once the smoothed loss exceeds 4 times its minimum. It starts from the weights a run "
    "starts from (pretrained backbone, new head) and changes none: no run directory is written. "
    f"Writes lr_find.json and lr_find.png to --out; {RULE_HELP}. Measured (docs/results.md): "
    "a head's suggestion was its tuned rate; fine-tuning's was several times low, a lower bound "
    "(closer with --after-frozen)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_source(p)
    add_setting_flags(p, list(SETTING_FLAGS))
    p.add_argument(
        "--phase",
        choices=("finetune", "head"),
        default=None,
        help="finetune: every layer, train.optimizer (the rate is train.lr); head: the frozen "
        "backbone's head (train.head_lr, or train.lr in features mode) (default: finetune, or "
        "head for train.mode=features)",
    )
    p.add_argument(
        "--after-frozen",
        action="store_true",
        help="--phase finetune: train the config's frozen-backbone epochs (train.freeze_epochs) "
        "first, as a run does, then test from the trained head (default: from the new head)",
    )
    p.add_argument(
        "--steps", type=at_least(10), default=100, metavar="N", help="steps (default: 100)"
    )
    p.add_argument("--start-lr", type=at_least(0, float, strict=True), default=1e-7,
                   metavar="LR", help="the first rate (default: 1e-07)")  # fmt: skip
    p.add_argument("--end-lr", type=at_least(0, float, strict=True), default=10.0,
                   metavar="LR", help="the last rate (default: 10)")  # fmt: skip
    p.add_argument(
        "--out", metavar="DIR", help="where lr_find.json and lr_find.png go (default: "
        "RUNS_ROOT/lr-find-<time>-<preset>)",
    )  # fmt: skip
    p.add_argument("--runs-root", default="runs", metavar="DIR",
                   help="where the default --out goes (default: ./runs)")  # fmt: skip
    device_help = f"{DEVICE_HELP} (train.device; default: {preset_default('train.device', None)})"
    add_common(p, device_help=device_help)


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the engine loads torch.
    from cifar100.engine.lr_find import (
        check_request,
        default_out,
        default_phase,
        find_lr,
        save_result,
    )
    from cifar100.fileio import check_writable

    cfg = resolve_config(args)
    phase = args.phase or default_phase(cfg)
    check_request(cfg, phase, args.steps, args.start_lr, args.end_lr, args.after_frozen)
    out = Path(args.out) if args.out else default_out(args.runs_root, cfg.preset)
    check_writable(out / "lr_find.json", "lr-find result")  # before minutes of steps
    use_free_cores(say=True)
    try:
        result = find_lr(cfg, phase, args.steps, args.start_lr, args.end_lr,
                         cache_dir=args.cache_dir, progress=not args.no_progress,
                         after_frozen=args.after_frozen)  # fmt: skip
        save_result(result, out)
    except KeyboardInterrupt:
        print("lr-find: interrupted; no lr_find.json written, no weights changed", file=sys.stderr)
        return 130
    taken = f"{len(result.lrs)} of {result.steps} steps ({result.stopped})"
    if result.suggestion is None:
        print(f"lr-find: no suggestion: the smoothed loss never fell in {taken}; try a lower "
              f"--start-lr or more --steps; curve in {out}", file=sys.stderr)  # fmt: skip
        return 1
    value = f"{result.suggestion:.3g}"
    others = ", ".join(f"{k} {v:.3g}" for k, v in result.rates.items() if v and k != "valley")
    print(
        f"suggested {result.setting}={value} (valley rule; {others or 'steepest: none'}; "
        f"{taken}, {result.seconds:.0f} s); written to {out}\n"
        f"use it: {train_command(args, result.setting, value)}"
    )
    return 0


def train_command(args: argparse.Namespace, setting: str, value: str) -> str:
    """The `cifar100 train` command line of this config with the suggested rate set."""
    words = ["cifar100", "train"]
    for name in ("preset", "config"):
        if getattr(args, name):
            words += [f"--{name}", getattr(args, name)]
    for flag in SETTING_FLAGS.values():
        given = getattr(args, flag.dest, None)
        if given is not None and setting_kind(flag.key)[0] == "bool":  # a switch: no value
            words.append(flag.flag)
        elif given is not None:
            words += [flag.flag, str(given)]
    if args.device:
        words += ["--device", args.device]
    words += [w for item in args.set for w in ("--set", item)]
    words += ["--set", f"{setting}={value}"]
    return shlex.join(words)
