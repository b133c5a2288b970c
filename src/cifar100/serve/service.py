"""What the routes share: the model, its batcher, readiness, limits and metrics, as one
`Service` per application, which a route takes as a FastAPI dependency:

    async def route(service: Service = Depends(get_service)) -> ...

create_app (app.py) makes it and keeps it in `app.state.service`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import Request

from cifar100.cpu_threads import usable_cores
from cifar100.data.images import decode_image
from cifar100.errors import DataError, ImageTooLarge
from cifar100.runtime.trained_model import TrainedModel
from cifar100.serve.batching import Batcher, QueueFull
from cifar100.serve.explanations import Explainer
from cifar100.serve.limits import (
    InflightBytes,
    RequestError,
    check_count,
    check_pixels,
    decode_cost,
    read_body,
)
from cifar100.serve.monitoring import Monitoring
from cifar100.serve.settings import ServeSettings

__all__ = ["INLINE_DECODE_BYTES", "Service", "get_service"]

log = logging.getLogger("cifar100.serve")
# What is decoded on the event loop rather than handed to a decoding thread: images as small as
# CIFAR's (a 32x32 JPEG takes about 0.1 ms, less than the hand-over), by the pixels their headers
# declare, so that a small file that decodes to many pixels (a 3 KB PNG of 5000x5000) never
# holds up the loop that answers health checks. Headers are read on the loop for small bodies.
INLINE_DECODE_BYTES = 64 << 10
INLINE_DECODE_PIXELS = 64 * 64 * 16


class Service:
    """What the routes share: the model, its batcher, readiness, limits and metrics."""

    def __init__(
        self,
        model: TrainedModel,
        settings: ServeSettings,
        all_ready: Callable[[bool], bool] | None = None,
    ) -> None:
        self.model, self.settings = model, settings
        self.monitoring = Monitoring()
        self.inflight = InflightBytes(int(settings.max_inflight_mb * (1 << 20)))
        # With several worker processes, ready when all of them are (workers.py).
        self._all_ready = all_ready or (lambda mine: mine)
        self._warm = False
        self.batcher = Batcher(
            model.logits,
            settings.max_batch,
            settings.batch_wait_ms,
            settings.max_queue,
            on_batch=self.monitoring.observe_batch,
            on_queue=self.monitoring.queue_changed,
        )
        # Decoding is CPU work too: off the event loop, beside the model's own thread.
        self.decoders = ThreadPoolExecutor(max(1, len(usable_cores())), "cifar100-decode")
        # /explain's heat maps, on the batcher's model thread in turn with its batches
        self.explainer = Explainer(model, self.batcher, settings.max_explain_queue, self.decoders)

    async def warm_up(self) -> None:
        """One full batch through the model (allocators, kernels), then ready."""
        size = self.model.image_size
        zeros = np.zeros((self.settings.max_batch, size, size, 3), np.uint8)
        try:
            await self.batcher.submit(zeros)
        except Exception as e:  # the model cannot run: stay not ready, and say why
            log.error("warm-up failed, so the server stays not ready: %s: %s",
                      type(e).__name__, e)  # fmt: skip
            return
        # What exists now lives as long as the server: out of the garbage collector's sight,
        # its full collections take a few ms instead of 250-300 ms once a second under load.
        gc.collect()
        gc.freeze()
        self._warm = True
        self._all_ready(True)  # other workers learn of it now, not when first asked
        log.info("ready: %s warmed up with a batch of %d", self.model, len(zeros))

    @property
    def verdict(self) -> bool:
        """Whether the model says "none of these" (it carries the rule: runtime/trust.py)."""
        return self.model.ood_rule is not None

    @property
    def ready(self) -> bool:
        return self._all_ready(self._warm)

    def stopping(self) -> None:
        """Not ready from now on: the server is shutting down."""
        self._warm = False
        self._all_ready(False)

    async def read_body(self, request: Request) -> bytes:
        """The request body, within the service's limits on bytes (limits.py)."""
        return await read_body(request, self.settings.max_request_bytes, self.inflight)

    def check_count(self, n: int) -> None:
        check_count(n, self.settings.max_images)

    async def decode(self, parts: list[tuple[str, bytes]]) -> np.ndarray:
        """uint8 (n, S, S, 3) of encoded images, decoded as training decoded its files, within
        the pixel limits, from what their headers declare before any is decoded."""
        self.check_count(len(parts))
        size, limit = self.model.image_size, self.settings.max_pixels

        def one(name: str, data: bytes) -> np.ndarray:
            try:
                return decode_image(data, size, name=name, max_pixels=limit)
            except ImageTooLarge as e:
                raise RequestError(413, str(e), "too_large") from None
            except DataError as e:
                raise RequestError(422, str(e), "not_image") from None

        def costs() -> list[int]:
            return [decode_cost(d, size) for _, d in parts]

        loop = asyncio.get_running_loop()
        if sum(len(d) for _, d in parts) <= INLINE_DECODE_BYTES:
            cost = costs()
        else:  # many headers to read (a TIFF's may be long): off the loop too
            cost = await loop.run_in_executor(self.decoders, costs)
        check_pixels(cost, self.settings.max_request_pixels)
        if sum(cost) <= INLINE_DECODE_PIXELS:
            return np.stack([one(n, d) for n, d in parts])  # well under a millisecond
        jobs = [loop.run_in_executor(self.decoders, one, n, d) for n, d in parts]
        return np.stack(await asyncio.gather(*jobs))

    async def logits(self, pixels: np.ndarray) -> np.ndarray:
        """The batcher's answer; requests during the warm-up queue behind it."""
        try:
            return await self.batcher.submit(pixels)
        except QueueFull as e:
            raise RequestError(
                503,
                f"busy: {e}; retry in {e.retry_after_s:.0f} s",
                "queue_full",
                {"Retry-After": str(int(np.ceil(e.retry_after_s)))},
            ) from None

    def predictions(self, logits: np.ndarray, names: list[str], k: int) -> list[dict]:
        """`cifar100 predict --json`'s objects, one for each image: calibrated probabilities
        and the OOD score and verdict (null for a model without the rule), TrainedModel.top's."""
        found = self.model.top(logits, k)
        for prediction, name in zip(found, names):
            prediction.name = name
        return [p.to_dict() for p in found]


async def get_service(request: Request) -> Service:
    """The FastAPI dependency of every route that uses the service. A coroutine, as FastAPI
    would run a plain function in its thread pool: a hand-over per request."""
    return request.app.state.service
