"""POST /explain's work: where the model looked, as a heat map over each image (a PNG), made by
TrainedModel.explain (Grad-CAM, runtime/explain.py) on the model's own thread.

    explainer = Explainer(model, batcher, max_waiting=16, pool=decoders)
    with explainer.room(2):                             # or 503: too many waiting
        pngs = await explainer.overlays(pixels, [3, 7])  # one PNG (bytes) per image

Bounded as /predict is, and so that it cannot starve /predict: the request's bytes, images and
pixels are /predict's limits (the route reads them alike); an explanation (a forward and a
backward pass) runs on the batcher's one model thread, one image at a time, in turn with the
batches of /predict, so that a batch waits for at most one image's explanation, never for a
queue of them; and the /explain requests in progress hold at most `max_waiting` images
(beyond them: 503 with Retry-After, as a full batch queue answers), counted before any of a
request's images is decoded. One thread for both also keeps
Captum's hooks on the model away from the batches' forward passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from concurrent.futures import Executor
from functools import partial

import numpy as np
from PIL import Image

from cifar100.runtime.trained_model import TrainedModel
from cifar100.serve.batching import Batcher
from cifar100.serve.limits import RequestError

__all__ = ["Explainer", "overlay_png"]


class Explainer:
    def __init__(
        self, model: TrainedModel, batcher: Batcher, max_waiting: int, pool: Executor
    ) -> None:
        self.model, self.batcher, self.max_waiting, self.pool = model, batcher, max_waiting, pool
        self.waiting = 0  # images of the /explain requests in progress
        self._turn = asyncio.Lock()  # one image on the model's thread at a time, in order
        self._mean_s = 0.2  # a running estimate of one image's explanation, for Retry-After

    def check_available(self) -> None:
        """501 where the model is run by ONNX Runtime: it has no gradients to follow."""
        if self.model.module is None:
            raise RequestError(
                501,
                "explanations need the PyTorch model, and this server runs it with ONNX "
                "Runtime; serve the run, checkpoint or safetensors export with --runtime torch",
                "not_supported",
            )

    @contextlib.contextmanager
    def room(self, n: int):
        """Room for a request of `n` images while it is in progress, or 503 with Retry-After
        when the requests in progress hold too many (a lone request may hold more)."""
        if self.waiting and self.waiting + n > self.max_waiting:
            retry = max(1, int(np.ceil(self.waiting * self._mean_s)))
            raise RequestError(
                503,
                f"busy: {self.waiting} images are being explained or waiting to be, and {n} "
                f"more would pass this server's limit of {self.max_waiting} "
                f"(--max-explain-queue); retry in {retry} s",
                "explain_queue_full",
                {"Retry-After": str(retry)},
            )
        self.waiting += n
        try:
            yield
        finally:
            self.waiting -= n

    async def overlays(self, pixels: np.ndarray, classes: list[int]) -> list[tuple[bytes, bool]]:
        """A PNG of each image (uint8 N, S, S, 3) with the map of where the model looked for
        its class in `classes` over it, at the image's size; and whether the map says where
        at all (False: the same everywhere, as a model whose last feature map is 1x1 gives)."""
        self.check_available()
        loop = asyncio.get_running_loop()
        pngs = []
        for image, class_index in zip(pixels, classes):
            async with self._turn:
                start = time.perf_counter()
                explain = partial(self.model.explain, image[None], int(class_index))
                heat = (await self.batcher.call(explain))[0]
                self._mean_s = 0.8 * self._mean_s + 0.2 * (time.perf_counter() - start)
            png = await loop.run_in_executor(self.pool, overlay_png, image, heat)
            pngs.append((png, bool(heat.any())))
        return pngs


def overlay_png(image: np.ndarray, heat: np.ndarray) -> bytes:
    """The PNG of `image` (H, W, 3) uint8 with `heat` (H, W) in [0, 1] over it."""
    # Here, not at the top: runtime/explain imports Captum (0.4 s), which only /explain needs.
    from cifar100.runtime.explain import overlay, stretched

    out = io.BytesIO()
    Image.fromarray(overlay(image, stretched(heat))).save(out, "PNG")  # drawn as predict draws it
    return out.getvalue()
