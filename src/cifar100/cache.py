"""What the cache holds, and clearing it: by kind, by age, or down to a size (least used first).

    cifar100 cache                                  # list kinds, sizes, last use
    cifar100 cache clear                            # what can be rebuilt without the network
    cifar100 cache clear features --older-than 30   # feature entries unused for 30 days
    cifar100 cache clear --max-gb 5                 # least recently used first, down to 5 GB

Loaders mark an entry used (its mtime) on every hit, so "last used" means just that.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar100.data.cifar_sources import SOURCES
from cifar100.data.download import STAMP_SUFFIX
from cifar100.display_text import visible
from cifar100.errors import ConfigError

# kind -> (where under the cache root, what removing it costs)
KINDS = {
    "downloads": ("*.tar.gz", "downloaded again (CIFAR archives, 160 MB each)"),
    "weights": ("weights/*", "downloaded again (pretrained weights)"),
    "decoded": ("decoded/*.npz", "decoded again from the archive"),
    "folders": ("folders/*.npz", "decoded again from the image folder"),
    "features": ("features/*.pt", "computed again by the backbone"),
    "partial": ("**/.*.tmp", "nothing: left by a process killed while writing"),
}
REBUILT_LOCALLY = ("decoded", "folders", "features", "partial")  # `clear`'s default
DECODED_NAME = re.compile(r"(\w+)-([0-9a-f]+)-v\d+\.npz")  # data.cifar: NAME-MD5-vN.npz
LISTED = 10  # entries listed by name, largest first


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    path: Path
    size: int  # bytes, with any download stamp beside it
    last_used: float  # seconds since the epoch


def cache_entries(root: Path) -> list[CacheEntry]:
    """Every entry under `root`, least recently used first."""
    entries = []
    for kind, (pattern, _) in KINDS.items():
        for path in root.glob(pattern):
            if not path.is_file() or path.name.endswith(STAMP_SUFFIX):
                continue
            if kind != "partial" and path.name.endswith(".tmp"):
                continue
            stat = path.stat()
            stamp = path.with_name(path.name + STAMP_SUFFIX)
            size = stat.st_size + (stamp.stat().st_size if stamp.is_file() else 0)
            entries.append(CacheEntry(kind, path, size, stat.st_mtime))
    return sorted(entries, key=lambda e: e.last_used)


def select_for_clearing(
    entries: list[CacheEntry],
    kinds: list[str] | None = None,
    older_than_days: float | None = None,
    max_gb: float | None = None,
    now: float | None = None,
) -> list[CacheEntry]:
    """The entries to remove: of `kinds` (default: those rebuilt without the network), unused
    for `older_than_days`, or, with `max_gb`, the least recently used until the rest fits."""
    kinds = list(kinds or REBUILT_LOCALLY)
    unknown = [k for k in kinds if k not in KINDS and k != "all"]
    if unknown:
        raise ConfigError(
            f"unknown cache kind {unknown[0]!r}; choose from {', '.join(KINDS)} or all"
        )
    if "all" in kinds:
        kinds = list(KINDS)
    if (older_than_days is not None and older_than_days < 0) or (max_gb is not None and max_gb < 0):
        raise ConfigError("--older-than and --max-gb must be >= 0")
    candidates = [e for e in entries if e.kind in kinds]
    if older_than_days is not None:
        cutoff = (now or time.time()) - older_than_days * 86400
        candidates = [e for e in candidates if e.last_used < cutoff]
    if max_gb is None:
        return candidates
    excess = sum(e.size for e in entries) - max_gb * 1e9
    chosen = []
    for entry in candidates:  # least recently used first
        if excess <= 0:
            break
        chosen.append(entry)
        excess -= entry.size
    return chosen


def remove_entries(entries: list[CacheEntry]) -> int:
    """Delete the entries (and their download stamps); the bytes freed."""
    freed = 0
    for entry in entries:
        stamp = entry.path.with_name(entry.path.name + STAMP_SUFFIX)
        for path in (entry.path, stamp):
            try:
                size = path.stat().st_size
                path.unlink()
                freed += size
            except FileNotFoundError:
                continue
    return freed


def format_cache(root: Path, entries: list[CacheEntry], now: float | None = None) -> str:
    """A table of kinds (count, size, last use), then the largest entries."""
    now = now or time.time()
    total = sum(e.size for e in entries)
    lines = [f"cache {root}: {_entries(len(entries))}, {human_size(total)}"]
    lines.append(f"  {'kind':<10} {'entries':>7} {'size':>10}  {'last used':<14} if removed")
    for kind, (_, cost) in KINDS.items():
        mine = [e for e in entries if e.kind == kind]
        if not mine:
            continue
        size = human_size(sum(e.size for e in mine))
        last = _ago(now - max(e.last_used for e in mine))
        lines.append(f"  {kind:<10} {len(mine):>7} {size:>10}  {last:<14} {cost}")
    largest = sorted(entries, key=lambda e: -e.size)[:LISTED]
    if largest:
        lines.append("  largest:" if len(entries) > LISTED else "  entries:")
        for e in largest:
            ago = _ago(now - e.last_used)
            lines.append(
                f"    {human_size(e.size):>10}  {ago:<14} {e.path.relative_to(root)}: "
                + visible(entry_origin(e))
            )
    return "\n".join(lines)


def entry_origin(entry: CacheEntry) -> str:
    """The dataset or model an entry came from, as far as the entry itself tells."""
    name = entry.path.name
    if entry.kind == "downloads":
        titles = [s.title for s in SOURCES.values() if s.filename == name]
        return f"the {titles[0]} python archive" if titles else "a downloaded archive"
    if entry.kind == "weights":
        return f"pretrained weights {name}"
    if entry.kind == "decoded":
        found = DECODED_NAME.fullmatch(name)
        source = SOURCES.get(found[1]) if found else None
        if source is None:
            return "a decoded CIFAR archive"
        which = "as published" if found[2] == source.md5 else f"archive md5 {found[2][:12]}"
        return f"{source.title}, decoded ({which})"
    if entry.kind == "folders":
        origin = _folder_origin(entry.path)
        if origin:
            return f"the image folder {origin}"
        return "an image folder (its path not recorded: cached before cifar100 recorded it)"
    if entry.kind == "features":
        return "frozen-backbone features (which backbone and data are not recorded in the file)"
    return "a file left half-written"


def _folder_origin(path: Path) -> str | None:
    """The folder or tarball an image-folder cache was decoded from (its meta's "origin")."""
    try:
        with np.load(path, allow_pickle=False) as z:  # reads the one small member
            return json.loads(str(z["meta"])).get("origin")
    except Exception:  # noqa: BLE001 - a damaged entry is named as unknown, never fatal here
        return None


def human_size(n: float) -> str:
    """Bytes in B, KB, MB or GB (powers of 1000)."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"


def _entries(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def _ago(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(seconds, 0) / 60:.0f} min ago"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"
