"""The `cifar100` parser, wired from one table: each command's module (cli/NAME.py) gives its
help line, its description, its arguments (add_arguments) and its run function (run)."""

from __future__ import annotations

import argparse

import cifar100.cli.audit as audit
import cifar100.cli.backbones as backbones
import cifar100.cli.bench as bench
import cifar100.cli.cache as cache
import cifar100.cli.compare as compare
import cifar100.cli.data as data
import cifar100.cli.evaluate as evaluate
import cifar100.cli.export as export
import cifar100.cli.import_keras as import_keras
import cifar100.cli.lr_find as lr_find
import cifar100.cli.predict as predict
import cifar100.cli.presets as presets
import cifar100.cli.report as report
import cifar100.cli.serve as serve
import cifar100.cli.summary as summary
import cifar100.cli.track as track
import cifar100.cli.train as train
import cifar100.cli.tune as tune
from cifar100.version import __version__

# In the order `cifar100 --help` lists them.
COMMANDS = {
    "train": train,
    "lr-find": lr_find,
    "tune": tune,
    "track": track,
    "evaluate": evaluate,
    "report": report,
    "compare": compare,
    "predict": predict,
    "summary": summary,
    "backbones": backbones,
    "bench": bench,
    "presets": presets,
    "import-keras": import_keras,
    "export": export,
    "serve": serve,
    "data": data,
    "audit": audit,
    "cache": cache,
}
DEBUG_HELP = "show full tracebacks on errors"
# No prefixes of flags: `summary --data X` would be taken for --dataset, and a flag added later
# would change what an old command line means.
ABBREVIATIONS = False
EPILOG = """examples:
  cifar100 train --preset seed                      the report's model and recipe on CIFAR-100
  cifar100 train --preset cpu-finetune --dataset folder --data images.tar.gz   (no GPU)
  cifar100 evaluate runs/20261125-120000-seed       test top-1/top-5, per class and superclass
  cifar100 evaluate RUN --tta flip --ema            mirror-image TTA, the EMA weights
  cifar100 compare runs/*                           one table of runs
  cifar100 predict runs/20261125-120000-seed cat.jpg dog.png
  cifar100 summary --preset seed                    the report's parameter table
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cifar100",
        description="Train, evaluate and use ImageNet-backbone image "
        "classifiers on CIFAR-100, CIFAR-10 and image folders.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=ABBREVIATIONS,
    )
    p.add_argument("--version", action="version", version=f"cifar100 {__version__}")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    # --debug also works after the command name (`cifar100 train --debug`).
    debug = argparse.ArgumentParser(add_help=False, allow_abbrev=ABBREVIATIONS)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    for name, command in COMMANDS.items():
        command.add_arguments(
            sub.add_parser(
                name,
                parents=[debug],
                help=command.HELP,
                description=command.DESCRIPTION,
                allow_abbrev=ABBREVIATIONS,
            )
        )
    return p
