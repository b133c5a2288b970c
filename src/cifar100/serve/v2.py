"""The Open Inference Protocol (KServe / Triton v2 REST) for the served model.

    client = tritonclient.http.InferenceServerClient("127.0.0.1:8000")
    images = tritonclient.http.InferInput("images", [n, 32, 32, 3], "UINT8")
    images.set_data_from_numpy(pixels)                      # uint8 (n, 32, 32, 3)
    client.infer("cifar100", [images]).as_numpy("probabilities")

The model is described as the `triton` export describes it: input "images" UINT8 [-1, S, S, 3],
outputs "probabilities" and "logits" FP32 [-1, C]. Images come at exactly S x S, as Triton takes
them, so that a client written against this server works against Triton unchanged. Extensions,
as Triton defines them: binary_tensor_data (tritonclient's default), classification ("score:
index:label" strings) and model_repository (the index; load and unload are refused). Errors
are {"error": one line} with a 4xx status, through app.py's RequestError handler.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from cifar100.export.tensor_names import INPUT, OUTPUTS
from cifar100.serve.limits import RequestError

if TYPE_CHECKING:  # app.py builds the router: importing it back would be a cycle
    from cifar100.serve.app import Service

# The ONNX export's tensor names (export/onnx_file.py INPUT and OUTPUTS), repeated so that
# serving does not import onnx; tests/test_serve_v2.py checks that they agree.
VERSION = "1"  # one model, one version: the version directory the `triton` export writes
PLATFORMS = {"torch": "pytorch_libtorch", "onnx": "onnxruntime_onnx"}  # Triton's names
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository"]
HEADER_LENGTH = "Inference-Header-Content-Length"  # the JSON part's length, before the tensors


@dataclass
class _Output:
    name: str
    binary: bool  # raw bytes after the JSON part, rather than a JSON "data" list
    classes: int  # classification extension: the top-k as strings; 0: the tensor itself


def v2_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
    settings = service.settings

    def served(name: str, version: str | None) -> None:
        """404 unless the path names the served model, and its one version if any."""
        if name != settings.name:
            message = f"unknown model {name!r}: this server serves {settings.name!r}"
        elif version not in (None, VERSION):
            message = f"model {name!r} has no version {version!r}, only {VERSION!r}"
        else:
            return
        raise RequestError(404, message, "not_found")

    def not_ready(body: dict) -> JSONResponse:
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    @router.get("", summary="Server metadata: name, version, protocol extensions")
    @router.get("/", include_in_schema=False)  # else the catch-all below would take it
    async def server_metadata() -> dict:
        from cifar100.version import __version__

        return {"name": "cifar100", "version": __version__, "extensions": EXTENSIONS}

    @router.get("/health/live", summary="The server is up")
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready", summary="The model is loaded and warmed up")
    async def ready():
        return {"ready": True} if service.ready else not_ready({"ready": False})

    @router.get("/models/{name}", summary="Model metadata: its input and outputs")
    @router.get("/models/{name}/versions/{version}", summary="Model metadata")
    async def model_metadata(name: str, version: str | None = None) -> dict:
        served(name, version)
        return metadata(service)

    @router.get("/models/{name}/ready", summary="The model is ready for inference")
    @router.get("/models/{name}/versions/{version}/ready", summary="The model is ready")
    async def model_ready(name: str, version: str | None = None):
        served(name, version)
        answer = {"name": name, "ready": service.ready}
        return answer if service.ready else not_ready(answer)

    @router.get("/models/{name}/config", summary="Triton's model configuration, as JSON")
    @router.get("/models/{name}/versions/{version}/config", summary="Triton's model config")
    async def model_config(name: str, version: str | None = None) -> dict:
        served(name, version)
        return triton_config(service)

    @router.post("/models/{name}/infer", summary="Classify images: UINT8 [N, S, S, 3]")
    @router.post("/models/{name}/versions/{version}/infer", summary="Classify images")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        served(name, version)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":  # tritonclient's request_compression_algorithm: rare
            raise RequestError(
                415, f"Content-Encoding {encoding}: send it uncompressed", "bad_request"
            )
        body = await service.read_body(request)
        # Parsing a JSON list of pixels is CPU work: off the event loop, as decoding is.
        loop = asyncio.get_running_loop()
        request_id, pixels, outputs = await loop.run_in_executor(
            service.decoders, read_request, service, body, request.headers.get(HEADER_LENGTH)
        )
        logits = await service.logits(pixels)
        service.monitoring.images(len(pixels))
        return respond(request_id, outputs, name, logits, service.model.classes)

    @router.post("/repository/index", summary="The served model (Triton's model repository)")
    async def repository_index(request: Request) -> list[dict]:
        body = await service.read_body(request)  # tritonclient sends none; {"ready": true}
        query = _json(body, "the index request") if body.strip() else {}
        if not isinstance(query, dict):
            raise _bad('the index request must be a JSON object, e.g. {"ready": true}')
        if _flag(query, "ready") and not service.ready:
            return []
        entry = {"name": settings.name, "version": VERSION, "state": "READY"}
        if not service.ready:
            entry |= {"state": "UNAVAILABLE", "reason": "warming up"}
        return [entry]

    @router.post("/repository/models/{name}/load", summary="Refused: one model, fixed")
    @router.post("/repository/models/{name}/unload", summary="Refused: one model, fixed")
    async def load_or_unload(name: str) -> None:
        raise _bad(
            f"this server serves one model, {settings.name!r}, loaded when it started; it "
            "cannot load or unload models (run `cifar100 serve` with another MODEL instead)"
        )

    # Last: any other /v2 path answers in the protocol's error shape, which tritonclient reads
    # (FastAPI's own {"detail": ...} would reach its user as a decoding failure).
    @router.api_route("/{path:path}", methods=["GET", "POST"], include_in_schema=False)
    async def unknown(path: str, request: Request) -> None:
        message = f"{request.method} /v2/{path} is not part of this server's protocol"
        raise RequestError(404, f"{message} (GET /v2 lists its extensions)", "not_found")

    return router


def metadata(service: Service) -> dict:
    """The model metadata response: the shapes the `triton` export's Triton reports."""
    model = service.model
    size, n = model.image_size, len(model.classes)
    return {
        "name": service.settings.name,
        "versions": [VERSION],
        "platform": PLATFORMS.get(model.runtime, model.runtime),
        "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, size, size, 3]}],
        "outputs": [{"name": o, "datatype": "FP32", "shape": [-1, n]} for o in OUTPUTS],
    }


def triton_config(service: Service) -> dict:
    """Triton's ModelConfig as its /config answers it; max_batch_size is per request."""
    size, n = service.model.image_size, len(service.model.classes)
    image = {"name": INPUT, "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC"}
    return {
        "name": service.settings.name,
        "platform": PLATFORMS.get(service.model.runtime, service.model.runtime),
        "max_batch_size": service.settings.max_images,
        "input": [image | {"dims": [size, size, 3]}],
        "output": [{"name": o, "data_type": "TYPE_FP32", "dims": [n]} for o in OUTPUTS],
    }


def read_request(
    service: Service, body: bytes, header_length: str | None
) -> tuple[str | None, np.ndarray, list[_Output]]:
    """The id, images (uint8 N, S, S, 3) and requested outputs of an inference request."""
    head, binary = _split(body, header_length)
    limit = int(service.settings.max_json_mb * (1 << 20))
    if len(head) > limit:  # json.loads holds the interpreter (and the event loop) throughout
        raise RequestError(
            413,
            f"JSON part of {len(head)} bytes, over this server's limit of {limit} "
            f"({service.settings.max_json_mb:g} MB, --max-json-mb); send the images as binary "
            "tensor data (tritonclient's binary_data=True, its default) or fewer per request",
            "too_large",
        )
    request = _json(head, "the inference request")
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise _bad('the inference request must be a JSON object with a list of "inputs"')
    if not isinstance(request.get("id", ""), str):
        raise _bad('"id" must be a string')
    outputs = _outputs(request, _flag(_parameters(request, "the request"), "binary_data_output"))
    size = service.model.image_size
    spec = f"{INPUT!r}, UINT8 [N, {size}, {size}, 3]"
    inputs = request["inputs"]
    if not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in inputs):
        raise _bad('each input must be an object with a "name"')
    names = [i["name"] for i in inputs]
    if names != [INPUT]:
        unknown = [n for n in names if n != INPUT]
        what = f"unknown input {unknown[0]!r}" if unknown else f"{len(names) or 'no'} inputs"
        raise _bad(f"{what}: this model takes one input, {spec}")
    tensor = inputs[0]
    if tensor.get("datatype") != "UINT8":
        raise _bad(f"input {INPUT!r} is {tensor.get('datatype')!r}: this model takes {spec}")
    shape = tensor.get("shape")
    counts = isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
    if not counts or shape[1:] != [size, size, 3]:
        raise _bad(
            f"input {INPUT!r} has shape {shape}: this model takes [N, {size}, {size}, 3], RGB "
            f"pixels channels last at exactly {size}x{size} (resize on the client, as for Triton)"
        )
    service.check_count(shape[0])
    return request.get("id"), _pixels(tensor, shape, binary), outputs


def _pixels(tensor: dict, shape: list[int], binary: bytes) -> np.ndarray:
    params = _parameters(tensor, f"input {INPUT!r}")
    if "shared_memory_region" in params:
        raise _bad('shared memory is not supported: send the images as "data" or binary data')
    given, size = "data" in tensor, params.get("binary_data_size")
    if given == (size is not None):
        both = "both" if given else "neither"
        raise _bad(f'input {INPUT!r} needs "data" or parameters.binary_data_size, not {both}')
    count = int(np.prod(shape))
    if size is not None:  # the binary tensor data extension: raw bytes after the JSON part
        if size != count:
            raise _bad(
                f"input {INPUT!r}: binary_data_size is {size!r}, shape {shape} needs {count}"
            )
        if len(binary) != size:
            raise _bad(
                f"input {INPUT!r}: binary_data_size is {size} but {len(binary)} bytes follow the "
                f"JSON part, whose length {HEADER_LENGTH} must give"
            )
        return np.frombuffer(binary, np.uint8).reshape(shape)
    if binary:
        raise _bad(f"{len(binary)} bytes after the JSON part, but no input has binary_data_size")
    try:  # flat or nested as the shape: the spec allows both, and both flatten alike
        values = np.asarray(tensor["data"]) if isinstance(tensor["data"], list) else None
    except ValueError:  # ragged nesting
        values = None
    if values is not None and values.size != count:
        raise _bad(f'input {INPUT!r}: "data" has {values.size} values, shape {shape} needs {count}')
    if values is None or values.dtype.kind not in "iu":
        raise _bad(f'input {INPUT!r}: "data" must be a list of integers 0..255, flat or nested')
    if values.min() < 0 or values.max() > 255:
        low, high = values.min(), values.max()
        raise _bad(f'input {INPUT!r}: "data" holds values {low}..{high}, outside 0..255')
    return values.astype(np.uint8).reshape(shape)


def _outputs(request: dict, default_binary: bool) -> list[_Output]:
    """The requested outputs; none: both, as binary_data_output says (JSON by default)."""
    wanted = request.get("outputs") or []
    if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
        raise _bad('"outputs" must be a list of objects, each with a "name"')
    if not wanted:
        return [_Output(name, default_binary, 0) for name in OUTPUTS]
    outputs = []
    for output in wanted:
        name = output.get("name")
        if name not in OUTPUTS:
            raise _bad(f"unknown output {name!r}: this model gives {' and '.join(OUTPUTS)}")
        params = _parameters(output, f"output {name!r}")
        if "shared_memory_region" in params:
            raise _bad("shared memory is not supported: ask for the outputs in the response")
        k = params.get("classification", 0)
        if type(k) is not int or k < 0:
            raise _bad(f"output {name!r}: classification must be a number of classes, not {k!r}")
        binary = _flag(params, "binary_data", default_binary)  # overrides binary_data_output
        outputs.append(_Output(name, binary, k))
    return outputs


def respond(
    request_id: str | None, wanted: list[_Output], name: str, logits: np.ndarray, classes: list[str]
) -> Response:
    """The inference response: JSON, or JSON then the binary outputs in their order."""
    scores = {"logits": logits, "probabilities": torch.from_numpy(logits).softmax(1).numpy()}
    outputs, blobs = [], []
    for output in wanted:
        values = scores[output.name]
        if output.classes:
            values = _classifications(values, output.classes, classes)
        datatype = "BYTES" if output.classes else "FP32"
        entry = {"name": output.name, "datatype": datatype, "shape": list(values.shape)}
        if output.binary:
            blobs.append(_binary(values))
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = values.ravel().tolist()
        outputs.append(entry)
    head = {"id": request_id} if request_id is not None else {}
    head |= {"model_name": name, "model_version": VERSION, "outputs": outputs}
    text = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return Response(text, media_type="application/json")
    # As Triton answers binary outputs: the length of the JSON part in a header of its own.
    blob, length = b"".join(blobs), {HEADER_LENGTH: str(len(text))}
    return Response(text + blob, media_type="application/octet-stream", headers=length)


def _classifications(scores: np.ndarray, k: int, classes: list[str]) -> np.ndarray:
    """(N, min(k, C)) strings "score:index:label", highest first: Triton's classification
    extension, with the score printed as Triton's std::to_string prints a float."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.array([[f"{row[i]:f}:{i}:{classes[i]}" for i in ix] for row, ix in zip(scores, top)])


def _binary(values: np.ndarray) -> bytes:
    """Binary tensor data: little-endian FP32, or BYTES as a 4-byte length before each string."""
    if values.dtype.kind == "U":
        return b"".join(struct.pack("<I", len(s)) + s for s in (v.encode() for v in values.flat))
    return values.astype("<f4").tobytes()


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary tensor data after it."""
    if header_length is None:
        return body, b""
    n = header_length.strip()
    if not (n.isascii() and n.isdigit()) or int(n) > len(body):
        raise _bad(
            f"{HEADER_LENGTH} {header_length!r}: need the JSON part's length, 0..{len(body)}"
        )
    return body[: int(n)], body[int(n) :]


def _json(text: bytes, what: str) -> object:
    try:
        return json.loads(text)
    except RecursionError:  # nesting deeper than the interpreter's stack: the client's doing
        raise _bad(f"malformed JSON in {what}: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        # The usual cause of "Extra data": binary tensor data sent without its header.
        extra = getattr(e, "msg", "") == "Extra data"
        hint = f"; if binary tensor data follows, send {HEADER_LENGTH}: {e.pos}" if extra else ""
        raise _bad(f"malformed JSON in {what}: {e}{hint}") from None


def _parameters(obj: dict, what: str) -> dict:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise _bad(f'{what}: "parameters" must be an object')
    return params


def _flag(params: dict, key: str, default: bool = False) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise _bad(f"{key} must be true or false, not {value!r}")
    return value


def _bad(message: str) -> RequestError:
    return RequestError(400, message, "bad_request")
