"""`cifar100 summary`: the model's layer and parameter table, as in the report."""

from __future__ import annotations

import argparse

from cifar100.cli.args import at_least
from cifar100.cli.settings_flags import (
    MODEL_FLAGS,
    add_config_source,
    add_setting_flags,
    resolve_config,
)
from cifar100.errors import CifarError

HELP = "print the model's layer and parameter table"
DESCRIPTION = (
    "The report's table: layer, input and output shape, parameters (counting batch-norm "
    "moving statistics, as Keras does)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_source(p)
    add_setting_flags(p, MODEL_FLAGS)
    p.add_argument(
        "--classes",
        type=at_least(1),
        metavar="N",
        help="number of classes (default: from the dataset)",
    )


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the models load torch.
    from cifar100.config import validate
    from cifar100.models.registry import build_model
    from cifar100.models.summary import format_summary

    cfg = resolve_config(args)
    n = args.classes or cfg.data.class_count()
    if n is None:
        raise CifarError(
            "an image folder's class count comes from its data, which summary does not read: "
            "pass --classes N"
        )
    if cfg.data.dataset == "folder":  # the table needs the class count alone, not the folder
        cfg.data.path = cfg.data.path or "(not read)"
    cfg = validate(cfg)
    cfg.model.weights = "none"  # the table needs shapes and counts, not trained values
    model = build_model(cfg.model, num_classes=n)
    print(format_summary(model, cfg.data.decoded_size()))
    return 0
