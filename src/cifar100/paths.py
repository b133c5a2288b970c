"""Where the tool keeps downloads and caches."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CIFAR100_CACHE"


def default_cache_dir() -> Path:
    """$CIFAR100_CACHE, else the user's cache dir (e.g. ~/.cache/cifar100)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir  # on first use: most commands never ask

    return Path(user_cache_dir("cifar100", appauthor=False))


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """The flag wins over the environment variable, which wins over the default."""
    path = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path
