"""`cifar100 compare`: one table of several runs."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "one table of several runs"
DESCRIPTION = (
    "Preset, backbone, weights, mode, epochs, best validation and test accuracy (and the mean "
    "top-1 under corruption, where `evaluate --corruptions` measured it), wall time, "
    "throughput and device of each run directory."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the metrics load torch.
    from cifar100.compare import format_comparison, read_runs

    # The runs that can be read are compared; each that cannot is one line: exit 1 then, and
    # 2 when none could be read.
    rows, broken = read_runs(args.runs)
    for line in broken:
        print(f"cifar100 compare: skipped: {line}", file=sys.stderr)
    if rows:
        print(json.dumps(rows, indent=2) if args.json else format_comparison(rows))
    return 0 if not broken else 1 if rows else 2
