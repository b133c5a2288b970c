"""Adaptive batching: images of concurrent requests gathered into one batch for the model, which
runs in a worker thread so that the event loop (health checks, the page) stays responsive.

    batcher = Batcher(model.logits, max_batch=32, wait_ms=5, max_queue=256)
    await batcher.start()
    logits = await batcher.submit(pixels)      # uint8 (n, S, S, 3) -> float32 (n, classes)
    maps = await batcher.call(lambda: model.explain(pixels))   # on the model's thread, alone

A batch takes every image waiting when the model is free (up to `max_batch`), so batches grow
by themselves under load and a lone request runs at once; `wait_ms` > 0 also makes the first
image wait that long for company. The queue is bounded: beyond `max_queue` waiting images,
`submit` raises QueueFull at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Batcher", "QueueFull"]


class QueueFull(Exception):
    """Too many images are waiting; the caller should answer 503 and retry later."""

    def __init__(self, waiting: int, retry_after_s: float) -> None:
        super().__init__(f"{waiting} images are waiting for the model")
        self.retry_after_s = retry_after_s


_STOP = object()  # queued by stop(): what came before it still runs


@dataclass
class _Job:
    pixels: np.ndarray
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """One model, one worker thread, a bounded queue of image batches."""

    def __init__(
        self,
        run: Callable[[torch.Tensor, int], torch.Tensor],
        max_batch: int = 32,
        wait_ms: float = 5.0,
        max_queue: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        self.run, self.max_batch, self.wait_s = run, max_batch, wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch  # (images, seconds) after each model call, for metrics
        self.on_queue = on_queue or (lambda waiting: None)  # each change of `waiting`
        self.waiting = 0  # images queued, not yet in a batch
        self._queue: asyncio.Queue[_Job | None] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cifar100-model")
        self._mean_batch_s = 0.05  # a running estimate, for Retry-After

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        if self._task is not None:
            await self._queue.put(_STOP)
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        """Logits (n, classes) of uint8 images (n, S, S, 3), once their batch has run."""
        if self._queue is None or self._task is None:
            raise RuntimeError("the batcher is not running")
        if self.waiting and self.waiting + len(pixels) > self.max_queue:
            batches = self.waiting / self.max_batch + 1
            raise QueueFull(self.waiting, max(1.0, batches * self._mean_batch_s))
        job = _Job(pixels, asyncio.get_running_loop().create_future())
        self.waiting += len(pixels)
        self.on_queue(self.waiting)
        self._queue.put_nowait(job)
        return await job.future

    async def call(self, fn: Callable[[], object]) -> object:
        """`fn()` run on the model's thread, between two batches: work that needs the model
        to itself (an explanation's backward pass), which a batch then waits for, at most one
        such call's time if the callers take turns (Service.explain)."""
        if self._task is None:
            raise RuntimeError("the batcher is not running")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Job | object | None = None  # taken from the queue, for the next batch
        while True:
            job, carry = (carry, None) if carry is not None else (await self._queue.get(), None)
            if job is _STOP:
                return  # everything queued before it has run
            jobs, count = [job], len(job.pixels)
            deadline = loop.time() + self.wait_s
            while count < self.max_batch:  # gather until full, or until the wait is over
                try:
                    more = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        more = await asyncio.wait_for(self._queue.get(), left)
                    except TimeoutError:
                        break
                if more is _STOP or count + len(more.pixels) > self.max_batch:
                    carry = more  # the stop signal, or the first job of the next batch
                    break
                jobs.append(more)
                count += len(more.pixels)
            self.waiting -= count
            self.on_queue(self.waiting)
            await self._run(loop, jobs, count)

    async def _run(self, loop, jobs: list[_Job], count: int) -> None:
        batch = np.concatenate([j.pixels for j in jobs]) if len(jobs) > 1 else jobs[0].pixels
        start = time.perf_counter()
        try:
            logits = await loop.run_in_executor(
                self._executor, lambda: self.run(torch.from_numpy(batch), self.max_batch).numpy()
            )
        except Exception as e:  # a model failure fails this batch's requests, not the server
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        seconds = time.perf_counter() - start
        self._mean_batch_s = 0.8 * self._mean_batch_s + 0.2 * seconds
        if self.on_batch is not None:
            self.on_batch(count, seconds)
        lo = 0
        for j in jobs:
            if not j.future.done():  # its client may have gone
                j.future.set_result(logits[lo : lo + len(j.pixels)])
            lo += len(j.pixels)
