"""The Open Inference Protocol (KServe / Triton v2 REST) under /v2: thin routes over the codec
(v2_codec.py), registered from one table.

    client = tritonclient.http.InferenceServerClient("127.0.0.1:8000")
    images = tritonclient.http.InferInput("images", [n, 32, 32, 3], "UINT8")
    images.set_data_from_numpy(pixels)                      # uint8 (n, 32, 32, 3)
    client.infer("cifar100", [images]).as_numpy("probabilities")   # calibrated
    # and "ood_score", "none_of_these" [n, 1] (always false for a model without the rule)

A client written against this server works against Triton serving the `triton` export
unchanged. Errors are {"error": one line} with a 4xx status, through app.py's RequestError
handler; not ready is 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from cifar100.serve import v2_codec as codec
from cifar100.serve.service import Service, get_service
from cifar100.version import __version__

Served = Annotated[Service, Depends(get_service)]


async def server_metadata() -> codec.ServerMetadataResponse:
    return codec.server_metadata(__version__)


async def live() -> codec.ServerLiveResponse:
    return codec.ServerLiveResponse(live=True)


async def ready(response: Response, service: Served) -> codec.ServerReadyResponse:
    return codec.ServerReadyResponse(ready=readiness(service, response))


async def model_metadata(
    name: str, service: Served, version: str | None = None
) -> codec.ModelMetadataResponse:
    codec.check_model(name, version, service.settings.name)
    model = service.model
    return codec.model_metadata(name, model.image_size, len(model.classes), model.runtime)


async def model_ready(
    name: str, response: Response, service: Served, version: str | None = None
) -> codec.ModelReadyResponse:
    codec.check_model(name, version, service.settings.name)
    return codec.ModelReadyResponse(name=name, ready=readiness(service, response))


async def model_config(name: str, service: Served, version: str | None = None) -> dict:
    model, settings = service.model, service.settings
    codec.check_model(name, version, settings.name)
    return codec.triton_config(
        name, model.image_size, len(model.classes), model.runtime, settings.max_images
    )


async def infer(
    name: str, request: Request, service: Served, version: str | None = None
) -> Response:
    codec.check_model(name, version, service.settings.name)
    codec.check_encoding(request.headers.get("content-encoding", "identity"))
    body = await service.read_body(request)
    # Parsing a JSON list of pixels is CPU work: off the event loop, as decoding is.
    loop = asyncio.get_running_loop()
    decoded = await loop.run_in_executor(
        service.decoders, decode, service, body, request.headers.get(codec.HEADER_LENGTH)
    )
    logits = await service.logits(decoded.images)
    service.monitoring.images(len(decoded.images))
    tensors = codec.output_tensors(logits, service.model.scores(logits))
    answer = codec.encode_response(decoded, name, tensors, service.model.classes)
    return Response(answer.body, media_type=answer.media_type, headers=answer.headers)


async def repository_index(request: Request, service: Served) -> list[dict]:
    body = await service.read_body(request)  # tritonclient sends none; {"ready": true}
    return codec.repository_index(body, service.settings.name, service.ready)


async def load_or_unload(name: str, service: Served) -> None:
    raise codec.load_refused(service.settings.name)


async def unknown(path: str, request: Request) -> None:
    raise codec.unknown_path(request.method, path)


# method(s), path under /v2, route, summary in the OpenAPI schema (None: not in it), in the
# order they are matched.
ROUTES: list[tuple[str, str, Callable, str | None]] = [
    ("GET", "/", server_metadata, None),  # else the catch-all below would take it
    ("GET", "", server_metadata, "Server metadata: name, version, protocol extensions"),
    ("GET", "/health/live", live, "The server is up"),
    ("GET", "/health/ready", ready, "The model is loaded and warmed up"),
    ("GET", "/models/{name}/versions/{version}", model_metadata, "Model metadata"),
    ("GET", "/models/{name}", model_metadata, "Model metadata: its input and outputs"),
    ("GET", "/models/{name}/versions/{version}/ready", model_ready, "The model is ready"),
    ("GET", "/models/{name}/ready", model_ready, "The model is ready for inference"),
    ("GET", "/models/{name}/versions/{version}/config", model_config, "Triton's model config"),
    ("GET", "/models/{name}/config", model_config, "Triton's model configuration, as JSON"),
    ("POST", "/models/{name}/versions/{version}/infer", infer, "Classify images"),
    ("POST", "/models/{name}/infer", infer, "Classify images: UINT8 [N, S, S, 3]"),
    ("POST", "/repository/index", repository_index,
     "The served model (Triton's model repository)"),
    ("POST", "/repository/models/{name}/unload", load_or_unload, "Refused: one model, fixed"),
    ("POST", "/repository/models/{name}/load", load_or_unload, "Refused: one model, fixed"),
    # Last: any other /v2 path answers in the protocol's error shape, which tritonclient reads
    # (FastAPI's own {"detail": ...} would reach its user as a decoding failure).
    ("GET POST", "/{path:path}", unknown, None),
]  # fmt: skip


def v2_router() -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
    for methods, path, route, summary in ROUTES:
        router.add_api_route(path, route, methods=methods.split(), summary=summary,
                             include_in_schema=summary is not None)  # fmt: skip
    return router


def readiness(service: Service, response: Response) -> bool:
    """Whether the service is ready; if not, the answer is 503 with Retry-After."""
    ready = service.ready
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = "1"
    return ready


def decode(service: Service, body: bytes, header_length: str | None) -> codec.InferRequest:
    """An inference request decoded within the service's limits (in a decoding thread)."""
    return codec.decode_request(
        body,
        header_length,
        image_size=service.model.image_size,
        max_images=service.settings.max_images,
        max_json_mb=service.settings.max_json_mb,
    )
