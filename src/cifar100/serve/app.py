"""The HTTP service around one trained model: FastAPI, adaptive batching, limits, metrics.

    app = create_app(cifar100.load("runs/r"), ServeSettings(max_batch=32))

Routes: GET / (the page, page.py), GET /model, POST /predict and GET /metrics (json_api.py),
the Open Inference Protocol under /v2 (v2.py), and the API docs at /docs; each takes the
Service (service.py) as a dependency. Swagger UI's script and style come from the
fastapi-offline package (under DOCS_ASSETS), not a CDN: /docs works offline, as the page does.
Ready (/v2/health/ready) once warmed up. Every refusal and failure is {"error": one line}.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount, Route

from cifar100.display_text import visible
from cifar100.runtime.trained_model import TrainedModel
from cifar100.serve.json_api import add_json_api
from cifar100.serve.limits import RequestError
from cifar100.serve.monitoring import Monitoring
from cifar100.serve.page import page_router
from cifar100.serve.service import Service
from cifar100.serve.settings import ServeSettings
from cifar100.serve.v2 import v2_router
from cifar100.version import __version__

__all__ = ["RequestError", "ServeSettings", "Service", "create_app"]

log = logging.getLogger("cifar100.serve")
LOGGED_PATH_CHARS = 200
DOCS_ASSETS = "/docs/assets"  # Swagger UI's script and style, and the icon


def create_app(
    model: TrainedModel,
    settings: ServeSettings | None = None,
    all_ready: Callable[[bool], bool] | None = None,
) -> FastAPI:
    """The FastAPI application serving `model`; `all_ready(mine)` says whether every worker
    process is ready, given this one's state (default: this one alone)."""
    service = Service(model, settings or ServeSettings(), all_ready)
    # FastAPI itself, with /docs reading its files from DOCS_ASSETS. No /redoc: ReDoc's page
    # fetches its logo from the internet, which the service's pages never do.
    app = FastAPIOffline(
        redoc_url=None,
        title="cifar100",
        version=__version__,
        summary=f"{model.backbone} image classifier: {len(model.classes)} classes",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
    )
    app.state.service = service  # what get_service gives each route
    add_error_handlers(app, service.monitoring)
    app.add_middleware(CountAndLog, service=service, router=app.router)
    add_json_api(app)
    app.include_router(v2_router())
    app.include_router(page_router())
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    """The batcher started and the model warmed up in the background; at the end, the
    requests in flight finished first."""
    service: Service = app.state.service
    await service.batcher.start()
    warming = asyncio.create_task(service.warm_up())
    yield
    # Uvicorn has stopped taking connections and let the requests in flight finish.
    service.stopping()
    await asyncio.gather(warming, return_exceptions=True)
    await service.batcher.stop()
    service.decoders.shutdown(wait=True)


def add_error_handlers(app: FastAPI, monitoring: Monitoring) -> None:
    """Every error answered as {"error": one line}, and counted by its kind."""

    async def failed(request: Request, e: Exception) -> JSONResponse:
        # A fault of ours (the model failed, a bug): one line to the client, as every error
        # here is, so that a v2 client shows it; the traceback goes to the log.
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        monitoring.error("internal")
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, 500)

    async def refused(request: Request, e: RequestError) -> JSONResponse:
        monitoring.error(e.kind)
        return JSONResponse({"error": str(e)}, status_code=e.status, headers=e.headers)

    # FastAPI's and Starlette's own refusals (a bad query parameter, an unknown path, a wrong
    # method) in the same {"error": one line} shape as every other answer here.
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        monitoring.error("bad_request")
        return JSONResponse({"error": validation_message(e)}, status_code=422)

    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        monitoring.error("not_found" if e.status_code == 404 else "bad_request")
        message = f"{request.method} {request.url.path}: {e.detail}"
        return JSONResponse({"error": message}, status_code=e.status_code, headers=e.headers)

    app.add_exception_handler(Exception, failed)
    app.add_exception_handler(RequestError, refused)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)


class CountAndLog:
    """ASGI middleware: each request counted, timed and logged in one line (a plain ASGI
    wrapper: Starlette's @app.middleware("http") costs more per request)."""

    def __init__(self, app, service: Service, router) -> None:
        self.app, self.service, self.router = app, service, router

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500
        # Where the request was sent, before routing rewrites it (a Mount moves root_path).
        sent = {"type": "http", "method": scope["method"], "path": scope["path"],
                "root_path": scope.get("root_path", "")}  # fmt: skip

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
            route = route_label(scope.get("route"), sent, self.router.routes)
            self.service.monitoring.observe_request(route, status, seconds)
            client = (scope.get("client") or ("-",))[0]
            # The path is the client's: %0A in it would forge a log line of its own.
            path = visible(scope["path"][:LOGGED_PATH_CHARS])
            log.info('%s "%s %s" %d %.1fms', client, scope["method"], path, status,
                     seconds * 1000)  # fmt: skip


def route_label(route, sent: dict, routes) -> str:
    """The path template a request went to, as /metrics counts it ("unmatched": none).

    FastAPI puts the routes made by its decorators (APIRoute) in the scope, but not a plain
    Starlette route (its own /openapi.json) or a mount (DOCS_ASSETS): those are found again
    from the request as it was sent. Only they and unknown paths pay for the search."""
    if route is not None:
        return route.path
    for candidate in routes:
        if isinstance(candidate, Route | Mount) and candidate.matches(sent)[0] != Match.NONE:
            return candidate.path_format  # a Mount's: its path + "/{path}"
    return "unmatched"


def validation_message(e: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one line: where, what, and what was given."""
    said = []
    for error in e.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "path"))
        given = f" (got {error['input']!r})" if "input" in error else ""
        said.append(f"{where or 'request'}: {error.get('msg', 'invalid')}{given}")
    return "; ".join(said) + "; see /docs"
