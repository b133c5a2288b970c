"""Data sources, decoded once into in-memory uint8 tensors (see tensors.py)."""

from __future__ import annotations

from pathlib import Path

from cifar100.config import DataConfig
from cifar100.data.tensors import DataSplits, ImageSet, limit_per_split, split_holdout

__all__ = ["DataSplits", "ImageSet", "load_data", "split_holdout"]


def load_data(cfg: DataConfig, cache_dir: Path, seed: int = 0, progress: bool = True) -> DataSplits:
    """Load the configured source into memory, applying `label`, `exclude` and the quick-run
    limits."""
    if cfg.dataset in ("cifar100", "cifar10"):
        # Each source's reader on first use: only the one a run needs is imported.
        from cifar100.data.cifar import load_cifar

        splits = load_cifar(cfg.dataset, path=cfg.path, cache_dir=cache_dir, progress=progress)
        if cfg.dataset == "cifar100" and cfg.label == "coarse":
            splits = _coarse_as_labels(splits)
    else:
        # (Pillow and the decoding pool come with it.)
        from cifar100.data.folders import load_image_folder

        splits = load_image_folder(
            cfg.path,
            image_size=cfg.image_size,
            cache_dir=cache_dir,
            test_fraction=cfg.test_fraction,
            seed=seed,
            progress=progress,
            strict=cfg.strict,
        )
    if cfg.exclude:
        # before the limits: a quick run on a subset leaves out the same flagged images
        from cifar100.data.exclusions import exclude_findings

        splits.train, splits.info["excluded"] = exclude_findings(splits.train, cfg.exclude)
    splits.train = limit_per_split(splits.train, cfg.limit_train, seed)
    splits.test = limit_per_split(splits.test, cfg.limit_test, seed + 1)
    return splits


def _coarse_as_labels(splits: DataSplits) -> DataSplits:
    def swap(s: ImageSet) -> ImageSet:
        return ImageSet(images=s.images, labels=s.coarse_labels, classes=s.coarse_classes)

    return DataSplits(
        train=swap(splits.train),
        test=swap(splits.test),
        name=splits.name + "-coarse",
        source=splits.source,
        info=splits.info,
    )
