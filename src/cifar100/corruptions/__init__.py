"""The 15 common corruptions of CIFAR-10-C / CIFAR-100-C and ImageNet-C (Hendrycks & Dietterich,
ICLR 2019), applied to uint8 image batches, deterministically per image.

    from cifar100.corruptions import corrupt, CORRUPTIONS
    hazy = corrupt(images, "fog", severity=3)       # images: uint8 (N, H, W, 3) tensor

Every image draws its random numbers from its own numpy RandomState, seeded from (seed, name,
severity, index), so an image's result does not depend on which others share its batch. The draws
follow the order of the `imagecorruptions` package, so seeding numpy's global generator with
`image_seed(...)` before calling that package gives the same image (see tests/test_corruptions.py).
"""

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import DataError
from . import blur, digital, noise, weather  # noqa: F401  (importing registers the corruptions)
from .params import CIFAR_TABLE_MAX_SIDE, TABLES
from .registry import REGISTRY

# Hendrycks & Dietterich's order: by family, and within a family as each module defines them
# (import order, which the linter sorts, does not matter).
FAMILY_ORDER = ("noise", "blur", "weather", "digital")
CORRUPTIONS: tuple[str, ...] = tuple(
    sorted(REGISTRY, key=lambda name: FAMILY_ORDER.index(REGISTRY[name].family))
)
FAMILIES: dict[str, str] = {name: REGISTRY[name].family for name in CORRUPTIONS}
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
MIN_SIDE = 32  # as imagecorruptions; the blurs' edge handling assumes no smaller image

__all__ = [
    "CORRUPTIONS",
    "FAMILIES",
    "FAMILY_ORDER",
    "SEVERITIES",
    "TABLES",
    "corrupt",
    "default_table",
    "image_seed",
    "parameters",
]


def default_table(height: int, width: int) -> str:
    """The table `corrupt` uses when none is named: "cifar" up to 64 px, "imagenet" above."""
    return "cifar" if max(height, width) <= CIFAR_TABLE_MAX_SIDE else "imagenet"


def _check(name: str, severity: int, table: str) -> None:
    if name not in REGISTRY:
        raise DataError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise DataError(f"severity {severity!r} is not one of {', '.join(map(str, SEVERITIES))}")
    if table not in TABLES:
        raise DataError(f"unknown corruption table {table!r}; choose one of {', '.join(TABLES)}")


def parameters(name: str, severity: int, table: str) -> object:
    """The parameters of corruption `name` at `severity` in `table` ("cifar" or "imagenet")."""
    _check(name, severity, table)
    return TABLES[table][name][severity - 1]


def image_seed(seed: int, name: str, severity: int, index: int) -> int:
    """The RandomState seed of image `index`: a stable hash (BLAKE2b) of all four, below 2**32."""
    key = f"{int(seed)}/{name}/{int(severity)}/{int(index)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")


def corrupt(
    images: torch.Tensor,
    name: str,
    severity: int,
    seed: int = 0,
    table: str | None = None,
    indices: Sequence[int] | None = None,
) -> torch.Tensor:
    """Corrupt a uint8 batch (N, H, W, 3) with corruption `name` at `severity` (1..5).

    table: "cifar" or "imagenet" parameters; None picks by size (`default_table`).
    indices: each image's index in the whole data set (default 0..N-1); pass them when
    corrupting part of a set so each image gets the randomness it gets in the whole.
    Returns a new uint8 tensor of the same shape. Values are truncated, not rounded, to uint8,
    as the published data sets and imagecorruptions do.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise DataError("corrupt takes a uint8 torch tensor of images (N, H, W, 3)")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"corrupt takes images as (N, H, W, 3); got shape {tuple(images.shape)}")
    n, h, w = images.shape[:3]
    if min(h, w) < MIN_SIDE:
        raise DataError(f"corrupt needs images of at least {MIN_SIDE}x{MIN_SIDE}; got {h}x{w}")
    table = table if table is not None else default_table(h, w)
    params = parameters(name, severity, table)
    index = range(n) if indices is None else [int(i) for i in indices]
    if len(index) != n:
        raise DataError(f"corrupt got {len(index)} indices for {n} images")
    if n == 0:
        return images.clone()
    rngs = [np.random.RandomState(image_seed(seed, name, severity, i)) for i in index]
    x = np.ascontiguousarray(images.cpu().numpy())
    out = REGISTRY[name].apply(x, params, rngs)
    # np.uint8(float) truncates towards zero; the values are already clipped to 0..255.
    return torch.from_numpy(np.ascontiguousarray(out).astype(np.uint8)).to(images.device)
