"""`cifar100 cache`: list or clear downloads, decoded data and feature caches."""

from __future__ import annotations

import argparse
from pathlib import Path

from cifar100.cli.args import at_least
from cifar100.errors import CifarError

HELP = "list or clear downloads, decoded data and feature caches"
DESCRIPTION = (
    "List what the cache holds (kind, size, last use), or clear it. `clear` removes by default "
    "only what is rebuilt without the network (decoded data, image folders, features, partial "
    "files); name kinds, or `all`, to remove downloads too."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        nargs="?",
        choices=["list", "clear"],
        default="list",
        help="list the entries by kind (default), or clear them",
    )
    p.add_argument(
        "kinds", nargs="*", metavar="KIND", help="downloads weights decoded folders features "
        "partial all (clear's default: decoded folders features partial)",
    )  # fmt: skip
    p.add_argument(
        "--older-than",
        type=at_least(0, float),
        metavar="DAYS",
        help="only entries unused for DAYS days",
    )
    p.add_argument(
        "--max-gb",
        type=at_least(0, float),
        metavar="N",
        help="least recently used first, until N GB remain",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    p.add_argument("--cache-dir", metavar="DIR", help="default: $CIFAR100_CACHE or the user cache")


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the cache module loads torch.
    from cifar100.cache import (
        cache_entries,
        format_cache,
        human_size,
        remove_entries,
        select_for_clearing,
    )
    from cifar100.paths import default_cache_dir

    root = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    entries = cache_entries(root) if root.is_dir() else []
    if args.action == "list":
        if args.kinds or args.older_than is not None or args.max_gb is not None:
            raise CifarError("kinds, --older-than and --max-gb go with `cifar100 cache clear`")
        print(format_cache(root, entries))
        return 0
    chosen = select_for_clearing(entries, args.kinds, args.older_than, args.max_gb)
    size = human_size(sum(e.size for e in chosen))
    if args.dry_run:
        for entry in chosen:
            print(f"would remove {entry.path} ({human_size(entry.size)})")
        print(f"would free {size} ({len(chosen)} of {len(entries)} entries) in {root}")
        return 0
    freed = remove_entries(chosen)
    print(f"removed {len(chosen)} of {len(entries)} entries ({human_size(freed)}) from {root}")
    return 0
