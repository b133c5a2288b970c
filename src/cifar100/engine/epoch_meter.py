"""What a fine-tuning epoch measures while it runs: its loss, accuracy, images and time."""

from __future__ import annotations

import time

import torch

from cifar100.engine import distributed
from cifar100.engine.distributed import DistInfo
from cifar100.engine.position import ResumePosition


class EpochMeter:
    """The epoch's running loss sum and correct predictions, kept on the device (no host
    synchronisation per step), and the images seen, on the host: this rank's, plus (on rank
    0) those of every rank before a resume."""

    def __init__(
        self, device: torch.device, dist: DistInfo, position: ResumePosition | None
    ) -> None:
        self.dist = dist
        self.first, self.before = 0, 0.0  # the step it starts at, seconds run before it
        self.sums = torch.zeros(2, device=device, dtype=torch.float64)
        self.seen = 0
        if position is not None:
            self.first, self.before = position.step, position.elapsed
            self.sums, self.seen = position.carried_sums(device, dist)
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        correct = (logits.detach().argmax(1) == labels).sum().double()
        self.sums += torch.stack([loss.detach().double() * len(labels), correct])
        self.seen += len(labels)

    def totals(self) -> torch.Tensor:
        """(loss sum, correct, images seen) of this rank."""
        return torch.cat([self.sums, self.sums.new_tensor([self.seen])])

    def elapsed(self) -> float:
        """Seconds the epoch has run, sessions before a resume included."""
        return self.before + time.perf_counter() - self.start

    def images_per_s(self, steps_done: int, batch_size: int) -> float:
        """Global images a second this session, at `steps_done` steps into the epoch."""
        return (steps_done - self.first) * batch_size / (time.perf_counter() - self.start)

    def epoch_stats(self, optimizer, steps: int, batch_size: int) -> dict[str, float]:
        """The finished epoch's training metrics, over all ranks."""
        elapsed = time.perf_counter() - self.start
        loss_sum, correct, seen = distributed.all_reduce_sum(self.totals(), self.dist).tolist()
        return {
            "train_loss": loss_sum / max(seen, 1),
            "train_top1": correct / max(seen, 1),
            "lr": optimizer.param_groups[-1]["lr"],
            "images_per_s": (steps - self.first) * batch_size / max(elapsed, 1e-9),
        }
