"""Seeding every generator a training run draws from."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed every generator; with `deterministic`, refuse nondeterministic kernels too."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def seed_epoch(
    seed: int, epoch: int, rank: int = 0, device: torch.device | None = None
) -> torch.Generator:
    """Seed one epoch's draws, so each depends on (seed, epoch) alone and a resumed run draws
    what an unbroken one did: torch's global RNG (dropout; each rank its own) is reseeded, and
    the returned generator (augmentation and mixing, the same on every rank) lives on
    `device` when that is a GPU, else on the CPU."""
    on = device if device is not None and device.type == "cuda" else torch.device("cpu")
    generator = torch.Generator(device=on).manual_seed(seed * 1_000_003 + epoch)
    torch.manual_seed(seed * 7_919 + epoch * 31 + rank)
    return generator
