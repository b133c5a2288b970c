"""The device a model runs on, mixed precision, and the environment record of a run."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from cifar100.errors import ConfigError
from cifar100.version import __version__


def select_device(name: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU for "auto"; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("device 'mps' asked for, but Apple MPS is not available; use auto")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed); full precision elsewhere."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def tune_backends(device: torch.device, deterministic: bool = False) -> None:
    """On CUDA, the fast settings for fixed-shape convnets: cuDNN's autotuner picks each
    convolution's fastest kernel, and float32 matmuls may use TF32. Left alone on other
    devices, and with `deterministic` (the autotuner's choice can vary between runs)."""
    if device.type != "cuda" or deterministic:
        return
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")


def environment_info(device: torch.device) -> dict:
    """What a reader needs to reproduce or judge a run."""
    info = {
        "cifar100": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "command": sys.argv,
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
