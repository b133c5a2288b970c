"""The in-memory dataset every source decodes into: uint8 N x H x W x 3 plus labels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ImageSet:
    """One split held in memory. `images` is uint8 (N, H, W, 3); `labels` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    # CIFAR-100's 20 superclasses; None for sources that have none.
    coarse_labels: torch.Tensor | None = None
    coarse_classes: list[str] | None = None
    # Where each image came from, relative to its folder or tarball (image folders only).
    paths: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 (N,H,W,3), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if len(self.labels) != len(self.images):
            raise ValueError("images and labels differ in length")
        if self.paths is not None and len(self.paths) != len(self.labels):
            raise ValueError("paths and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: torch.Tensor | np.ndarray) -> ImageSet:
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(
            images=self.images[index],
            labels=self.labels[index],
            classes=self.classes,
            coarse_labels=None if self.coarse_labels is None else self.coarse_labels[index],
            coarse_classes=self.coarse_classes,
            paths=None if self.paths is None else [self.paths[i] for i in index.tolist()],
        )

    def fingerprint(self, labels: bool = True) -> str:
        """A short content hash, for cache keys and run records; labels=False: of the pixels
        alone (what features depend on: relabelled images keep their cached features)."""
        h = hashlib.sha256()
        h.update(self.images.numpy().tobytes())
        if labels:
            h.update(self.labels.numpy().tobytes())
            h.update("\n".join(self.classes).encode())
        return h.hexdigest()[:16]


@dataclass
class DataSplits:
    """Train and test splits of one source, with where they came from."""

    train: ImageSet
    test: ImageSet
    name: str
    source: str = ""
    info: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def split_holdout(data: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split off a seeded, class-stratified `fraction` of `data` (e.g. a validation set)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    labels = data.labels.numpy()
    keep, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n = int(round(len(idx) * fraction))
        if len(idx) > 1:
            n = min(max(n, 1), len(idx) - 1)
        else:
            n = 0
        held.append(idx[:n])
        keep.append(idx[n:])
    keep_idx = np.sort(np.concatenate(keep))
    held_idx = np.sort(np.concatenate(held))
    return data.subset(keep_idx), data.subset(held_idx)


def limit_per_split(data: ImageSet, limit: int | None, seed: int) -> ImageSet:
    """A seeded random subset of at most `limit` images (for quick runs); None keeps all."""
    if limit is None or limit >= len(data):
        return data
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(data), generator=g)[:limit].sort().values
    return data.subset(index)


def fine_to_coarse(*splits: ImageSet) -> list[int] | None:
    """Each class's superclass index, read off the labels (CIFAR-100); None without superclasses."""
    if not splits or any(s.coarse_labels is None for s in splits):
        return None
    mapping = [0] * len(splits[0].classes)
    for s in splits:
        pairs = torch.stack([s.labels, s.coarse_labels]).unique(dim=1)
        for fine, coarse in pairs.t().tolist():
            mapping[fine] = coarse
    return mapping
