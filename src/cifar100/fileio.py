"""Atomic file writes: a crash never leaves a half file where a good one was."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # fsync so that the rename never exposes a file whose bytes are still in flight.
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def torch_save_atomic(obj: Any, target: str | os.PathLike) -> None:
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


def mark_used(path: str | os.PathLike) -> None:
    """Set a cache entry's mtime to now, so that clearing by age or size spares it.

    A read-only cache is fine: the entry just keeps its old time.
    """
    with contextlib.suppress(OSError):
        os.utime(path)
