"""Batches sliced from a dataset held on the training device: no per-image Python work."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cifar100.data.tensors import ImageSet


class DeviceBatches:
    """Holds one split's uint8 images on `device` (pinned host memory for CPU) and yields batches.

    Shuffling uses a generator seeded per epoch, so an epoch's order depends only on
    (seed, epoch): a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(
        self,
        data: ImageSet,
        device: torch.device,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        self.images = data.images.to(device, non_blocking=True)
        self.labels = data.labels.to(device, non_blocking=True)
        self.device = device
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last and len(data) > batch_size
        self.seed = seed

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (uint8 NHWC images, int64 labels) batches for one epoch, from batch `start`."""
        n = len(self.labels)
        if self.shuffle:
            g = torch.Generator(device="cpu").manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g).to(self.device)
        else:
            order = None
        for i in range(start, len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            if order is None:
                yield self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                yield self.images[idx], self.labels[idx]
