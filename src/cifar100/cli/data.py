"""`cifar100 data`: download or decode a dataset and describe it."""

from __future__ import annotations

import argparse

from cifar100.cli.args import STRICT_HELP, add_common, add_image_size
from cifar100.config import CHOICES, DataConfig
from cifar100.display_text import DISPLAY_LIMIT, display_names, visible
from cifar100.errors import CifarError

HELP = "download or decode a dataset and describe it"
DESCRIPTION = (
    "Fetch (or read) and cache a dataset, then print its splits and classes: useful to "
    "prepare an offline machine."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        choices=CHOICES["data.dataset"],
        default=DataConfig.dataset,
        help=f"which data (default: {DataConfig.dataset}); folder needs --data",
    )
    p.add_argument(
        "--data",
        metavar="PATH",
        help="archive, extracted folder or image folder (default: download CIFAR, or its cached "
        "copy)",
    )
    add_image_size(p)
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    add_common(p, device=False)


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the data loads torch.
    from cifar100.data import load_data
    from cifar100.paths import resolve_cache_dir

    if args.dataset == "folder" and not args.data:
        raise CifarError("--dataset folder needs --data PATH (a folder or tarball)")
    cfg = DataConfig(
        dataset=args.dataset, path=args.data, image_size=args.image_size, strict=args.strict
    )
    splits = load_data(cfg, resolve_cache_dir(args.cache_dir), progress=not args.no_progress)
    print(
        f"{splits.name}: {len(splits.train)} train / {len(splits.test)} test images, "
        f"{splits.train.image_size}x{splits.train.image_size}, {len(splits.classes)} classes"
    )
    print(visible(f"  source: {splits.source}"))
    print(f"  classes: {', '.join(display_names(splits.classes, DISPLAY_LIMIT))}")
    if splits.train.coarse_classes:
        print(f"  superclasses: {', '.join(display_names(splits.train.coarse_classes))}")
    return 0
