"""The service's own JSON API: GET /model (the model card), POST /predict (multipart or a raw
image body -> `cifar100 predict --json`'s objects), POST /explain (the same bodies -> where the
model looked, a PNG heat map over each image) and GET /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cifar100.serve.limits import RequestError
from cifar100.serve.multipart import MalformedMultipart, read_files
from cifar100.serve.service import INLINE_DECODE_BYTES, Service, get_service

Served = Annotated[Service, Depends(get_service)]
MAX_K = 1000

PREDICT_DESCRIPTION = (
    "A multipart form with one or more image files (any field name), or one raw image as the "
    "body (image/*, application/octet-stream). Answers one object per image, as `cifar100 "
    "predict --json` prints: {path, predictions: [{class, probability}], ood_score, "
    "none_of_these}. The probabilities are calibrated (the model's temperature); ood_score "
    "says how unlike the training images the image is (the entropy of the class scores, in "
    "nats), and none_of_these is true when it is above the model's threshold: the image is "
    "none of the classes. Both are null for a model saved without the rule."
)
EXPLAIN_DESCRIPTION = (
    "Where the model looked: the same bodies as /predict (multipart image files, or one raw "
    "image). Answers one object per image: {path, class, class_index, probability, ood_score, "
    "none_of_these, overlay_png}, overlay_png being a base64 PNG of the image (at the model's "
    "input size) with a Grad-CAM heat map of `class` over it: the predicted class, or "
    "?class= (an index or a name). Needs the PyTorch runtime (501 under --runtime onnx); at "
    "most --max-explain-queue images wait at once (503 with Retry-After beyond)."
)
# What /predict and /explain answer, for the schema: they build their answers as JSON
# themselves (a response model would validate and re-encode every number).
VERDICT = {
    "ood_score": {"type": ["number", "null"], "description": "how unlike the training images "
                  "(softmax entropy, nats); null: the model has no rule"},
    "none_of_these": {"type": ["boolean", "null"], "description": "none of the classes: "
                      "ood_score above the model's threshold; null: the model has no rule"},
}  # fmt: skip
PREDICTION_SCHEMA = {"type": "array", "items": {"type": "object", "properties": {
    "path": {"type": "string"},
    "predictions": {"type": "array", "items": {"type": "object", "properties": {
        "class": {"type": "string"}, "probability": {"type": "number"}}}},
    **VERDICT,
}}}  # fmt: skip
EXPLANATION_SCHEMA = {"type": "array", "items": {"type": "object", "properties": {
    "path": {"type": "string"}, "class": {"type": "string"}, "class_index": {"type": "integer"},
    "probability": {"type": "number"}, **VERDICT,
    "overlay_png": {"type": "string", "format": "byte",
                    "description": "base64 PNG: the image with the heat map over it"},
}}}  # fmt: skip


def answers(schema: dict) -> dict:
    return {200: {"content": {"application/json": {"schema": schema}}}}


CLASS_PARAMETER = {"name": "class", "in": "query", "required": False,
                   "schema": {"type": "string"},
                   "description": "the class to explain: its index or name (default: each "
                   "image's predicted class)"}  # fmt: skip
# ?k= is read by top_k(): FastAPI's own parameter handling cost a tenth of the request's time
# on the event loop; the schema still says what it takes.
K_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 5}
K_PARAMETER = {"name": "k", "in": "query", "required": False, "schema": K_SCHEMA}


async def model_card(service: Served) -> dict:
    return card(service)


async def predict(request: Request, service: Served) -> JSONResponse:
    settings = service.settings
    k = top_k(request, settings.top_k)
    parts = await image_parts(service, request)
    pixels = await service.decode(parts)
    logits = await service.logits(pixels)
    service.monitoring.images(len(pixels))
    # A response, not a list: FastAPI would validate and re-encode every number of it.
    return JSONResponse(service.predictions(logits, [n for n, _ in parts], k or settings.top_k))


async def explain(request: Request, service: Served) -> JSONResponse:
    service.explainer.check_available()  # before reading a body it cannot use
    model = service.model
    wanted = class_index(request, model.classes)
    parts = await image_parts(service, request)
    service.check_count(len(parts))
    with service.explainer.room(len(parts)):  # before any is decoded
        pixels = await service.decode(parts)
        scores = model.scores(await service.logits(pixels))
        predicted = scores.probabilities.argmax(1).tolist()
        chosen = predicted if wanted is None else [wanted] * len(pixels)
        pngs = await service.explainer.overlays(pixels, chosen)
    service.monitoring.explanations(len(pixels))
    known = service.verdict
    return JSONResponse([
        {
            "path": name,
            "class": model.classes[c],
            "class_index": c,
            "probability": round(float(scores.probabilities[i, c]), 6),
            "ood_score": round(float(scores.ood_score[i]), 6) if known else None,
            "none_of_these": bool(scores.none_of_these[i]) if known else None,
            "overlay_png": base64.b64encode(png).decode(),
            "localized": localized,  # False: the map is the same everywhere, it cannot say
        }
        for i, ((name, _), c, (png, localized)) in enumerate(zip(parts, chosen, pngs))
    ])  # fmt: skip


async def metrics(service: Served) -> Response:
    body, content_type = service.monitoring.exposition()
    return Response(body, media_type=content_type)


def add_json_api(app: FastAPI) -> None:
    """The routes added to `app` itself: an included router would cost each request here
    about 9 us more to find its route (FastAPI 0.165, measured)."""
    app.add_api_route(
        "/model",
        model_card,
        methods=["GET"],
        summary="What the served model is (the page's model card)",
    )
    app.add_api_route(
        "/predict",
        predict,
        methods=["POST"],
        summary="Top-k classes of one or more images",
        description=PREDICT_DESCRIPTION,
        openapi_extra={"parameters": [K_PARAMETER]},
        responses=answers(PREDICTION_SCHEMA),
    )
    app.add_api_route(
        "/explain",
        explain,
        methods=["POST"],
        summary="Where the model looked: a heat map over each image, as a PNG",
        description=EXPLAIN_DESCRIPTION,
        openapi_extra={"parameters": [CLASS_PARAMETER]},
        responses=answers(EXPLANATION_SCHEMA),
    )
    app.add_api_route(
        "/metrics", metrics, methods=["GET"], summary="Prometheus metrics", include_in_schema=False
    )


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


def class_index(request: Request, classes: list[str]) -> int | None:
    """/explain's ?class=: a class index 0..C-1 or a class name; None: the predicted one."""
    raw = request.query_params.get("class")
    if raw is None or raw == "":
        return None
    if raw.isascii() and raw.isdigit():
        if int(raw) < len(classes):
            return int(raw)
        why = f"this model's classes are 0..{len(classes) - 1}"
    elif raw in classes:
        return classes.index(raw)
    else:
        why = "not one of this model's classes"
    raise RequestError(
        422, f"class {raw!r}: {why}; give an index or a name from GET /model", "bad_request"
    )


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
        # calibration and the "none of these" rule (runtime/trust.py); None: a model without
        "temperature": model.temperature,
        "ood_rule": model.ood_rule.to_json() if model.ood_rule is not None else None,
        "device": str(model.device),
        "max_batch": service.settings.max_batch,
        "max_images": service.settings.max_images,
        "max_request_mb": service.settings.max_request_mb,
    }
