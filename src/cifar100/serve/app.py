"""The HTTP service around one trained model: FastAPI, adaptive batching, limits, metrics.

    app = create_app(cifar100.load("runs/r"), ServeSettings(max_batch=32))

Routes: GET / (the page), GET /model (its card), POST /predict (multipart or a raw image
body -> `cifar100 predict --json`'s objects), the Open Inference Protocol under /v2 (v2.py),
GET /metrics (Prometheus), and FastAPI's /docs. Ready (/v2/health/ready) once warmed up.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from cifar100.cpu_threads import usable_cores
from cifar100.data.images import decode_image
from cifar100.display_text import visible
from cifar100.errors import DataError, ImageTooLarge
from cifar100.runtime.trained_model import TrainedModel
from cifar100.serve.batching import Batcher, QueueFull
from cifar100.serve.limits import (
    InflightBytes,
    RequestError,
    check_count,
    check_pixels,
    decode_cost,
    read_body,
)
from cifar100.serve.monitoring import Monitoring
from cifar100.serve.multipart import MalformedMultipart, read_files
from cifar100.serve.page import page_route
from cifar100.serve.settings import ServeSettings
from cifar100.serve.v2 import v2_router

__all__ = ["RequestError", "ServeSettings", "Service", "create_app"]

log = logging.getLogger("cifar100.serve")
# What is decoded on the event loop rather than handed to a decoding thread: images as small as
# CIFAR's (a 32x32 JPEG takes about 0.1 ms, less than the hand-over), by the pixels their headers
# declare, so that a small file that decodes to many pixels (a 3 KB PNG of 5000x5000) never
# holds up the loop that answers health checks. Headers are read on the loop for small bodies.
INLINE_DECODE_BYTES = 64 << 10
INLINE_DECODE_PIXELS = 64 * 64 * 16
LOGGED_PATH_CHARS = 200


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
        """`cifar100 predict --json`'s objects, one for each image."""
        found = self.model.top(logits, k)
        for prediction, name in zip(found, names):
            prediction.name = name
        return [p.to_dict() for p in found]


def create_app(
    model: TrainedModel,
    settings: ServeSettings | None = None,
    all_ready: Callable[[bool], bool] | None = None,
) -> FastAPI:
    """The FastAPI application serving `model`; `all_ready(mine)` says whether every worker
    process is ready, given this one's state (default: this one alone)."""
    settings = settings or ServeSettings()
    service = Service(model, settings, all_ready)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.batcher.start()
        warming = asyncio.create_task(service.warm_up())
        yield
        # Uvicorn has stopped taking connections and let the requests in flight finish.
        service.stopping()
        await asyncio.gather(warming, return_exceptions=True)
        await service.batcher.stop()
        service.decoders.shutdown(wait=True)

    app = FastAPI(
        title="cifar100",
        version=_version(),
        summary=f"{model.backbone} image classifier: {len(model.classes)} classes",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(Exception)
    async def failed(request: Request, e: Exception) -> JSONResponse:
        # A fault of ours (the model failed, a bug): one line to the client, as every error
        # here is, so that a v2 client shows it; the traceback goes to the log.
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        service.monitoring.error("internal")
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, 500)

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError) -> JSONResponse:
        service.monitoring.error(e.kind)
        return JSONResponse({"error": str(e)}, status_code=e.status, headers=e.headers)

    # FastAPI's and Starlette's own refusals (a bad query parameter, an unknown path, a wrong
    # method) in the same {"error": one line} shape as every other answer here.
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        service.monitoring.error("bad_request")
        return JSONResponse({"error": validation_message(e)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        service.monitoring.error("not_found" if e.status_code == 404 else "bad_request")
        message = f"{request.method} {request.url.path}: {e.detail}"
        return JSONResponse({"error": message}, status_code=e.status_code, headers=e.headers)

    app.add_middleware(CountAndLog, service=service)

    @app.get("/model", summary="What the served model is (the page's model card)")
    async def model_card() -> dict:
        return card(service)

    @app.post(
        "/predict",
        summary="Top-k classes of one or more images",
        description="A multipart form with one or more image files (any field name), or one "
        "raw image as the body (image/*, application/octet-stream). Answers one object per "
        "image, as `cifar100 predict --json` prints: {path, predictions: [{class, "
        "probability}]}.",
        # ?k= is read by top_k(): FastAPI's own parameter handling cost a tenth of the
        # request's time on the event loop; the schema still says what it takes.
        openapi_extra={"parameters": [{"name": "k", "in": "query", "required": False,
                                       "schema": {"type": "integer", "minimum": 1,
                                                  "maximum": MAX_K, "default": 5}}]},
    )  # fmt: skip
    async def predict(request: Request) -> JSONResponse:
        k = top_k(request, settings.top_k)
        parts = await image_parts(service, request)
        pixels = await service.decode(parts)
        logits = await service.logits(pixels)
        service.monitoring.images(len(pixels))
        # A response, not a list: FastAPI would validate and re-encode every number of it.
        return JSONResponse(service.predictions(logits, [n for n, _ in parts], k or settings.top_k))

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = service.monitoring.exposition()
        return Response(body, media_type=content_type)

    app.include_router(v2_router(service))
    app.include_router(page_route(service))
    return app


MAX_K = 1000


def top_k(request: Request, default: int) -> int:
    """/predict's ?k=: a whole number 1..MAX_K."""
    raw = request.query_params.get("k")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_K):
        raise RequestError(
            422, f"k: a whole number from 1 to {MAX_K}, not {raw!r}; see /docs", "bad_request"
        )
    return int(raw)


async def image_parts(service: Service, request: Request) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image a /predict request carries."""
    header = request.headers.get("content-type", "")
    content_type = header.split(";")[0].strip().lower()
    body = await service.read_body(request)
    if content_type == "multipart/form-data":
        try:
            if len(body) <= INLINE_DECODE_BYTES:
                return read_files(body, header)
            # Python parsing many parts: in a thread, which yields the loop every few ms
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(service.decoders, read_files, body, header)
        except MalformedMultipart as e:
            raise RequestError(400, f"malformed multipart body: {e}", "bad_request") from None

    if content_type.startswith("image/") or content_type in ("application/octet-stream", ""):
        name = request.headers.get("x-filename") or request.query_params.get("name") or "image"
        return [(name, body)] if body else []
    raise RequestError(
        415,
        f"content type {content_type!r}: send a multipart form of image files, or one image "
        "as the body (image/*)",
        "bad_request",
    )


class CountAndLog:
    """ASGI middleware: each request counted, timed and logged in one line (a plain ASGI
    wrapper: Starlette's @app.middleware("http") costs more per request)."""

    def __init__(self, app, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if self.service.inflight.release(scope):  # a burst is over: memory back to the OS
                asyncio.get_running_loop().run_in_executor(
                    self.service.decoders, self.service.inflight.trim
                )
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            self.service.monitoring.observe_request(route, status, seconds)
            client = (scope.get("client") or ("-",))[0]
            # The path is the client's: %0A in it would forge a log line of its own.
            path = visible(scope["path"][:LOGGED_PATH_CHARS])
            log.info('%s "%s %s" %d %.1fms', client, scope["method"], path, status,
                     seconds * 1000)  # fmt: skip


def card(service: Service) -> dict:
    """The model card: what the page shows, and what a client may want to know."""
    model, info = service.model, service.model.info
    return {
        "name": service.settings.name,
        "backbone": model.backbone,
        "dataset": info.dataset,
        "classes": model.classes,
        "num_classes": len(model.classes),
        "image_size": model.image_size,
        "preprocessing": model.preprocessing,
        "test_top1": info.test_top1,
        "test_top5": info.test_top5,
        "trained_at": info.saved_at,
        "epochs": info.epoch,
        "source": str(model.source),
        "runtime": model.runtime,
        "device": str(model.device),
        "max_batch": service.settings.max_batch,
        "max_images": service.settings.max_images,
        "max_request_mb": service.settings.max_request_mb,
    }


def _version() -> str:
    from cifar100.version import __version__

    return __version__


def validation_message(e: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one line: where, what, and what was given."""
    said = []
    for error in e.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "path"))
        given = f" (got {error['input']!r})" if "input" in error else ""
        said.append(f"{where or 'request'}: {error.get('msg', 'invalid')}{given}")
    return "; ".join(said) + "; see /docs"
