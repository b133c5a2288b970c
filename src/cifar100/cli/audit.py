"""`cifar100 audit`: wrong labels, duplicates, train/test leaks and outliers of a dataset."""

from __future__ import annotations

import argparse

from cifar100.cli.args import add_common, add_image_size, at_least
from cifar100.config import CHOICES

HELP = "find wrong labels, duplicates, train/test leaks and outliers in a dataset"
DESCRIPTION = (
    "Audit a dataset (an image folder or tarball, a CIFAR archive) or the data of a run: "
    "wrong labels by confident learning (cleanlab) on cross-validated probabilities from "
    "frozen backbone features, exact and near copies within train and between train and test, "
    "and outliers. Writes audit.csv (one row per flagged image, to edit), audit.html (image "
    "grids) and audit.json; `cifar100 train ... --exclude audit.csv` then trains without the "
    "training images its rows name."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        nargs="?",
        metavar="DATA_OR_RUN",
        help="an image folder or tarball, a CIFAR archive or folder, or a run directory "
        "(default: CIFAR as --dataset says, downloaded or cached)",
    )
    p.add_argument(
        "--dataset",
        choices=CHOICES["data.dataset"],
        help="what DATA is (default: cifar10/cifar100 for a path named as their published "
        "archive or folder, else folder)",
    )
    p.add_argument(
        "--preset",
        default="cpu",
        metavar="NAME",
        help="whose backbone gives the features and whose head the folds train (default: cpu, "
        "EfficientNet-Lite0 at 96 px: shares its feature cache with `train --preset cpu`)",
    )
    add_image_size(p, given_only=True)  # not given: a run's own size, else data.image_size's
    p.add_argument("--out", metavar="DIR", help="where the audit goes (default: RUN/audit or "
                   "./audit-NAME)")  # fmt: skip
    p.add_argument(
        "--folds",
        type=at_least(2),
        default=5,
        metavar="K",
        help="cross-validation folds: each image's probabilities come from a head trained "
        "without it (default: 5)",
    )
    p.add_argument(
        "--epochs",
        type=at_least(1),
        metavar="N",
        help="head epochs per fold (default: the preset's)",
    )
    p.add_argument(
        "--use-model",
        action="store_true",
        help="a run's own model gives the probabilities (fast, but in sample: it misses the "
        "wrong labels it learnt)",
    )
    p.add_argument(
        "--near-threshold",
        type=float,
        metavar="COSINE",
        help="feature cosine from which two images count as copies (default: 0.85, measured "
        "for the cpu preset's features; other backbones may need another)",
    )
    add_common(p)


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the audit loads torch.
    from cifar100.audit import NEAR_THRESHOLD, audit
    from cifar100.cli.threads import use_free_cores

    use_free_cores()
    result = audit(
        args.source,
        dataset=args.dataset,
        preset=args.preset,
        image_size=args.image_size,
        out=args.out,
        folds=args.folds,
        epochs=args.epochs,
        use_model=args.use_model,
        near_threshold=NEAR_THRESHOLD if args.near_threshold is None else args.near_threshold,
        cache_dir=args.cache_dir,
        device=args.device or "auto",
        progress=not args.no_progress,
    )
    counts = ", ".join(f"{n} {k}" for k, n in result.summary["counts"].items())
    print(f"found: {counts} ({result.summary['seconds']:.0f} s)")
    print(f"written to {result.folder}: audit.html, audit.csv, audit.json")
    return 0
