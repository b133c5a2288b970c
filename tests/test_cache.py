"""`cifar100 cache`: what the cache holds, and clearing it by kind, age and size."""

import os
import time

import pytest
import torch

from cifar100 import cli
from cifar100.cache import cache_entries, select_for_clearing
from cifar100.engine.features import FeatureCache

DAY = 86400


def _file(root, rel, size, days_ago):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    stamp = time.time() - days_ago * DAY
    os.utime(path, (stamp, stamp))
    return path


@pytest.fixture
def cache(tmp_path):
    root = tmp_path / "cache"
    _file(root, "cifar-100-python.tar.gz", 5000, 40)
    _file(root, "cifar-100-python.tar.gz.verified", 100, 40)
    _file(root, "weights/resnet50v2_notop.h5", 4000, 40)
    _file(root, "decoded/cifar100-abc-v1.npz", 3000, 1)
    _file(root, "folders/f1.npz", 2000, 50)
    _file(root, "features/old.pt", 1000, 60)
    _file(root, "features/new.pt", 1000, 0)
    _file(root, "features/.new.pt.x1.tmp", 10, 3)  # a write killed half-way
    _file(tmp_path / "elsewhere", "features/other.pt", 10, 90)  # outside the cache
    return root


def test_entries_have_kinds_sizes_and_last_use(cache):
    entries = cache_entries(cache)
    kinds = sorted(e.kind for e in entries)
    assert kinds == sorted(
        ["downloads", "weights", "decoded", "folders", "features", "features", "partial"]
    )
    download = next(e for e in entries if e.kind == "downloads")
    assert download.size == 5100  # with its verification stamp
    assert [e.last_used for e in entries] == sorted(e.last_used for e in entries)


def test_clear_by_default_keeps_downloads(cache, capsys):
    assert cli.main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    left = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())
    assert left == [
        "cifar-100-python.tar.gz",
        "cifar-100-python.tar.gz.verified",
        "weights/resnet50v2_notop.h5",
    ]
    assert "removed 5 of 7 entries" in capsys.readouterr().out
    assert (cache.parent / "elsewhere" / "features" / "other.pt").is_file()


def test_clear_by_kind_age_and_size(cache, capsys):
    entries = cache_entries(cache)
    old = select_for_clearing(entries, ["features"], older_than_days=30)
    assert [e.path.name for e in old] == ["old.pt"]
    every = select_for_clearing(entries, ["all"], older_than_days=30)
    assert {e.kind for e in every} == {"downloads", "weights", "folders", "features"}
    # 16,110 bytes in all; down to 12 kB: the least recently used rebuildable entries go
    # (60, 50, 3 and 1 day unused) until 12 kB remain; downloads and the newest stay.
    fit = select_for_clearing(entries, max_gb=12e-6)
    assert [e.path.name for e in fit] == [
        "old.pt",
        "f1.npz",
        ".new.pt.x1.tmp",
        "cifar100-abc-v1.npz",
    ]
    assert sum(e.size for e in entries) - sum(e.size for e in fit) <= 12000
    argv = ["cache", "clear", "all", "--dry-run", "--cache-dir", str(cache)]
    assert cli.main(argv) == 0
    assert "would free 16.1 KB (7 of 7 entries)" in capsys.readouterr().out
    assert len(cache_entries(cache)) == 7  # a dry run removes nothing


def test_list_and_bad_requests(cache, capsys):
    assert cli.main(["cache", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cache {cache}: 7 entries, 16.1 KB")
    assert "downloaded again" in out and "features " in out
    assert cli.main(["cache", "clear", "nope", "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown cache kind 'nope'" in err and "\n" not in err
    assert cli.main(["cache", "list", "features", "--cache-dir", str(cache)]) == 2
    assert cli.main(["cache", "--cache-dir", str(cache / "absent")]) == 0
    assert "0 entries" in capsys.readouterr().out


def test_a_cache_hit_marks_the_entry_used(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.save("k", torch.ones(3, 2))
    stamp = time.time() - 90 * DAY
    os.utime(cache.path("k"), (stamp, stamp))
    assert cache.load("k") is not None
    assert time.time() - cache.path("k").stat().st_mtime < 60
