"""Where a run stopped within an epoch, and how the resumed epoch picks up from there.

A mid-epoch checkpoint holds it under "position" as a plain dict (epoch_end.save_position
writes it):

    {"step": 2, "generator": <the epoch generator's state>, "rng": [<CPU RNG state>, ...],
     "cuda_rng": [<CUDA RNG state>, ...] or None, "sums": <(loss sum, correct, images seen)>,
     "elapsed": <seconds the epoch had run>}

with "rng" and "cuda_rng" one entry per rank and "sums" the total over ranks. The resumed
epoch skips the `step` batches already trained, restores the draws and carries the sums on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cifar100.engine.distributed import DistInfo
from cifar100.runtime.checkpoint import Checkpoint


@dataclass
class ResumePosition:
    """A stopped epoch's position: resumed from it, the run takes the steps an unbroken one
    would have (bit for bit on the same kind of device and process count)."""

    step: int  # steps done in the epoch: the resumed epoch starts at this batch
    generator: torch.Tensor  # the epoch's augmentation generator, the same on every rank
    rng: list[torch.Tensor]  # each rank's CPU RNG (dropout)
    cuda_rng: list[torch.Tensor] | None  # each rank's CUDA RNG, when it ran on CUDA
    sums: torch.Tensor  # float64 (loss sum, correct, images seen), all ranks together
    elapsed: float  # seconds the epoch had run before it stopped

    @classmethod
    def from_dict(cls, position: dict[str, Any]) -> ResumePosition:
        return cls(
            step=int(position["step"]),
            generator=position["generator"],
            rng=list(position["rng"]),
            cuda_rng=position.get("cuda_rng"),
            sums=position["sums"],
            elapsed=float(position["elapsed"]),
        )

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint | None) -> ResumePosition | None:
        """The position a checkpoint holds; None for one written at an epoch's end."""
        position = ckpt.position if ckpt is not None else None
        return cls.from_dict(position) if position else None

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's plain-dict form, keys in the order save_position writes them."""
        return {
            "step": self.step,
            "generator": self.generator,
            "rng": self.rng,
            "cuda_rng": self.cuda_rng,
            "sums": self.sums,
            "elapsed": self.elapsed,
        }

    def carried_sums(self, device: torch.device, dist: DistInfo) -> tuple[torch.Tensor, int]:
        """(loss sum, correct) on `device` and the images seen before the stop, which rank 0
        alone carries on (the epoch's totals are summed over ranks); zeros on other ranks."""
        sums = torch.zeros(2, device=device, dtype=torch.float64)
        if not dist.is_main:
            return sums, 0
        sums += self.sums[:2].to(device)
        return sums, int(self.sums[2])

    def restore(
        self,
        generator: torch.Generator,
        dist: DistInfo,
        device: torch.device,
        say: Callable[[str], None],
    ) -> None:
        """Set the random state the stopped epoch had: its augmentation generator, this
        rank's RNG.

        Resumed on another kind of device or process count, the run goes on from the same
        step with fresh draws, and says so: it is then no longer bit for bit the unbroken run.
        """
        try:
            generator.set_state(self.generator)
        except RuntimeError:  # a CUDA generator's state on a CPU, or the reverse
            say("note: resumed on another kind of device, so augmentation draws differ from here")
        if len(self.rng) != dist.world:
            say(
                f"note: stopped with {len(self.rng)} processes and resumed with "
                f"{dist.world}, so dropout draws differ from an unbroken run's until the "
                "epoch ends"
            )
            return
        torch.set_rng_state(self.rng[dist.rank])
        if device.type == "cuda" and self.cuda_rng:
            torch.cuda.set_rng_state(self.cuda_rng[dist.rank], device)
