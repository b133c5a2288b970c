"""A pool that decodes chunks of images into uint8 arrays: in this process while there are few,
then in worker processes (threads where fork is unavailable)."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Iterable
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)

import numpy as np
from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from cifar100.data.images import decode_image
from cifar100.errors import DataError

__all__ = ["DecodePool"]

# Up to this many images are decoded in this process: a pool costs more than it saves there.
SERIAL_LIMIT = 2048


def _decode_chunk(
    payloads: list[bytes | str], names: list[str], size: int
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode one task's images (in a worker); failures come back as messages by row."""
    out, errors = np.zeros((len(payloads), size, size, 3), np.uint8), {}
    for i, (payload, name) in enumerate(zip(payloads, names)):
        try:
            out[i] = decode_image(payload, size, name)
        except DataError as e:  # reported only if the image turns out to be in the layout
            errors[i] = str(e)
    return out, errors


class DecodePool:
    """Decodes chunks of (key, path or bytes, name): in this process while there are few, then
    in a pool; `gather` returns the results in any order asked, and the failures beside them."""

    def __init__(self, size: int, bar: tqdm) -> None:
        self.size, self.bar = size, bar
        self.blocks: list[tuple[list[str], np.ndarray]] = []  # decoded chunks, as they came
        self.count = 0
        self.errors: dict[str, str] = {}
        self.pool: Executor | None = None
        self.pending: dict[Future, list[str]] = {}
        self.workers = _workers()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def add(self, chunk: list[tuple[str, bytes | str, str]]) -> None:
        keys, payloads, names = (list(x) for x in zip(*chunk))
        if self.pool is None and self.count >= SERIAL_LIMIT and self.workers > 1:
            self.pool = _pool(self.workers)
        if self.pool is None:
            self._store(keys, *_decode_chunk(payloads, names, self.size))
            return
        # A bounded number of tasks in flight keeps memory flat however large the source is.
        while len(self.pending) >= 2 * self.workers:
            self._collect(wait(self.pending, return_when=FIRST_COMPLETED).done)
        self.pending[self.pool.submit(_decode_chunk, payloads, names, self.size)] = keys

    def gather(self, keys: list[str]) -> tuple[np.ndarray, dict[str, str]]:
        """The images of `keys` that decoded, in that order, and {key: error message} of the
        others: the caller decides what a failure means once it has seen them all."""
        self._collect(list(self.pending))
        failed = {k: self.errors[k] for k in keys if k in self.errors} if self.errors else {}
        # Scatter each block into place: one copy of the images (a concatenate-then-index
        # would be two, and on this scale the copies are most of the cost).
        where = {k: i for i, k in enumerate(k for k in keys if k not in failed)}
        out = np.empty((len(where), self.size, self.size, 3), np.uint8)
        filled = 0
        for block_keys, images in self.blocks:
            rows = [(r, where[k]) for r, k in enumerate(block_keys) if k in where]
            if rows:
                src_rows, dst_rows = zip(*rows)
                out[list(dst_rows)] = images[list(src_rows)]
                filled += len(rows)
        if filled != len(where):
            raise RuntimeError(f"decoded {filled} of {len(where)} images")  # a bug, not bad data
        return out, failed

    def _collect(self, futures: Iterable[Future]) -> None:
        for f in futures:
            self._store(self.pending.pop(f), *f.result())

    def _store(self, keys: list[str], images: np.ndarray, errors: dict[int, str]) -> None:
        self.count += len(keys)
        self.blocks.append((keys, images))
        self.errors.update((keys[row], msg) for row, msg in errors.items())
        self.bar.update(len(keys))


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))  # the CPUs this process may use (containers, taskset)
    except AttributeError:
        n = os.cpu_count() or 1
    return min(n, 16)


def _pool(workers: int) -> Executor:
    # Processes: on the real CIFAR-10 tarball threads were slower than one thread (decoding
    # 32x32 JPEGs is mostly Python-level work, serialised by the GIL). fork, not spawn or
    # forkserver: those re-import the caller's __main__ and so fail in a script without a
    # `__main__` guard. Where fork is unavailable or unsafe (macOS, Windows) use threads, which
    # still overlap Pillow's C decoding of larger images.
    if sys.platform.startswith("linux"):
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers)
