"""A tiny trained model for the tests that need one: EfficientNet-Lite0 from scratch at 32x32
on synthetic CIFAR-10, a 30 MB checkpoint, an epoch in about a second.

    run, cache, archive = train_tiny(tmp_path_factory.mktemp("serve"))
"""

from __future__ import annotations

from pathlib import Path

from cifar100 import cli
from synthetic_cifar import make_cifar10_archive

SMALL = ["--preset", "scratch", "--dataset", "cifar10", "--backbone", "efficientnet_lite0",
         "--set", "model.resize=1", "--set", "train.batch_size=32", "--no-progress"]  # fmt: skip


def train_tiny(
    root: Path, n_train: int = 64, n_test: int = 32, epochs: int = 1
) -> tuple[Path, Path, Path]:
    """Train into root/run with root/cache on a fresh archive: (run, cache, archive)."""
    archive = make_cifar10_archive(root / "c10.tar.gz", n_train, n_test)
    out, cache = root / "run", root / "cache"
    argv = ["train", *SMALL, "--data", str(archive), "--epochs", str(epochs), "--out", str(out)]
    assert cli.main([*argv, "--cache-dir", str(cache)]) == 0
    return out, cache, archive
