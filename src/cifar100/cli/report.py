"""`cifar100 report`: a run's self-contained HTML report."""

from __future__ import annotations

import argparse

from cifar100.display_text import visible

HELP = "write a run's self-contained HTML report (plots, tables, config)"
DESCRIPTION = (
    "Write RUN_DIR/report.html: the model table as in the report, the resolved config and "
    "environment, the metrics and every plot (PNG and SVG in RUN_DIR/plots), images embedded "
    "so it opens offline. Built from the run directory's files alone, so an interrupted run "
    "can be reported too. A finished `cifar100 train` has written the predictions the "
    "confusion matrices and example images need; for a run stopped before its test, or an "
    "imported Keras model, run `cifar100 evaluate RUN_DIR` first."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the report loads torch.
    from cifar100.report import build_report

    out = build_report(args.run_dir)
    print(visible(f"wrote {out} (plots in {out.parent / 'plots'})"))
    return 0
