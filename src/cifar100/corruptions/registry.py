"""The corruption registry: each corruption function registers its name and family here."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# f(images uint8 (N, H, W, 3), severity's parameters, one RandomState per image)
#   -> float or uint8 array (N, H, W, 3) in 0..255, clipped and truncated to uint8 by the caller.
CorruptionFn = Callable[[np.ndarray, Any, Sequence[np.random.RandomState]], np.ndarray]


@dataclass(frozen=True)
class Corruption:
    """One registered corruption: its name, its family and the function that applies it."""

    name: str
    family: str
    apply: CorruptionFn


REGISTRY: dict[str, Corruption] = {}


def register(family: str) -> Callable[[CorruptionFn], CorruptionFn]:
    """Register the decorated function under its own name, in `family`, in definition order."""

    def add(fn: CorruptionFn) -> CorruptionFn:
        if fn.__name__ in REGISTRY:
            raise ValueError(f"corruption {fn.__name__!r} registered twice")
        REGISTRY[fn.__name__] = Corruption(fn.__name__, family, fn)
        return fn

    return add
