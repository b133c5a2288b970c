"""The Open Inference Protocol's wire format (KServe / Triton v2 REST), without HTTP: requests
decoded into images, logits encoded into responses, the metadata and readiness answers typed.

    request = decode_request(body, headers.get(HEADER_LENGTH), image_size=32, max_images=64,
                             max_json_mb=1.0)                   # images: uint8 (N, 32, 32, 3)
    logits = model.logits(request.images)
    tensors = output_tensors(logits, model.scores(logits))
    answer = encode_response(request, "cifar100", tensors, classes)
    # answer.body, answer.media_type, answer.headers: what to send

The model is described as the `triton` export describes it: input "images" UINT8 [-1, S, S, 3],
outputs "probabilities" (calibrated: runtime/trust.py) and "logits" FP32 [-1, C], "ood_score"
FP32 and "none_of_these" BOOL [-1, 1] (runtime/tensor_names.py): one value per image, which
Triton shapes [-1, 1], since a batching model's config may not give an output no dims
(`dims: [1]` with `reshape: {shape: []}` over the graph's (N,)). A model without a "none of
these" rule gives what its exports give: the score, and a verdict that is always false.
Images come at exactly S x S, as Triton takes them. Extensions, as Triton
defines them: binary_tensor_data (tritonclient's default), classification ("score:index:label"
strings) and model_repository.
Every refusal is a RequestError (limits.py): its status, and one line for the client.
The infer request is read as json.loads reads it, with no model of its own: a JSON list of
pixels through pydantic would cost many times the parsing (the router's measured fast path).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from cifar100.runtime.tensor_names import (
    INPUT,
    LOGITS,
    NONE_OF_THESE,
    OOD_SCORE,
    OUTPUTS,
    PROBABILITIES,
)
from cifar100.runtime.trust import Scores
from cifar100.serve.limits import RequestError, check_count

VERSION = "1"  # one model, one version: the version directory the `triton` export writes
PLATFORMS = {"torch": "pytorch_libtorch", "onnx": "onnxruntime_onnx"}  # Triton's names
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository"]
HEADER_LENGTH = "Inference-Header-Content-Length"  # the JSON part's length, before the tensors
CLASS_SCORES = (PROBABILITIES, LOGITS)  # (N, C) each
VERDICT_OUTPUTS = (OOD_SCORE, NONE_OF_THESE)  # one value per image: Triton's dims [1]
DATATYPES = {OOD_SCORE: "FP32", NONE_OF_THESE: "BOOL"}  # the others: FP32


# The typed answers (the names KServe gives them)
class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLiveResponse(BaseModel):
    live: bool


class ServerReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


@dataclass(frozen=True)
class Output:
    """One output a request asks for."""

    name: str
    binary: bool  # raw bytes after the JSON part, rather than a JSON "data" list
    classes: int  # classification extension: the top-k as strings; 0: the tensor itself


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: np.ndarray  # uint8 (N, S, S, 3)
    outputs: list[Output]


@dataclass(frozen=True)
class Encoded:
    """An answer's body and what to send with it."""

    body: bytes
    media_type: str
    headers: dict[str, str]


def check_model(name: str, version: str | None, served: str) -> None:
    """404 unless `name` is the served model's, and `version` its one version if given."""
    if name != served:
        message = f"unknown model {name!r}: this server serves {served!r}"
    elif version not in (None, VERSION):
        message = f"model {name!r} has no version {version!r}, only {VERSION!r}"
    else:
        return
    raise RequestError(404, message, "not_found")


def check_encoding(content_encoding: str) -> None:
    """415 for a compressed body (tritonclient's request_compression_algorithm: rare)."""
    encoding = content_encoding.strip().lower()
    if encoding != "identity":
        raise RequestError(415, f"Content-Encoding {encoding}: send it uncompressed", "bad_request")


def server_metadata(version: str) -> ServerMetadataResponse:
    return ServerMetadataResponse(name="cifar100", version=version, extensions=EXTENSIONS)


def _output_dims(name: str, num_classes: int) -> list[int]:
    return [1] if name in VERDICT_OUTPUTS else [num_classes]


def model_metadata(
    name: str, image_size: int, num_classes: int, runtime: str
) -> ModelMetadataResponse:
    """The model metadata response: the shapes the `triton` export's Triton reports."""
    size = image_size
    return ModelMetadataResponse(
        name=name,
        versions=[VERSION],
        platform=PLATFORMS.get(runtime, runtime),
        inputs=[MetadataTensor(name=INPUT, datatype="UINT8", shape=[-1, size, size, 3])],
        outputs=[
            MetadataTensor(name=o, datatype=DATATYPES.get(o, "FP32"),
                           shape=[-1, *_output_dims(o, num_classes)])
            for o in OUTPUTS
        ],
    )  # fmt: skip


def triton_config(
    name: str, image_size: int, num_classes: int, runtime: str, max_batch_size: int
) -> dict:
    """Triton's ModelConfig as its /config answers it; max_batch_size is per request."""
    image = {"name": INPUT, "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC"}
    outputs = []
    for o in OUTPUTS:
        output = {"name": o, "data_type": f"TYPE_{DATATYPES.get(o, 'FP32')}",
                  "dims": _output_dims(o, num_classes)}  # fmt: skip
        if o in VERDICT_OUTPUTS:  # the graph's (N,): Triton's dims may not be empty
            output["reshape"] = {"shape": []}
        outputs.append(output)
    return {
        "name": name,
        "platform": PLATFORMS.get(runtime, runtime),
        "max_batch_size": max_batch_size,
        "input": [image | {"dims": [image_size, image_size, 3]}],
        "output": outputs,
    }


def repository_index(body: bytes, name: str, ready: bool) -> list[dict]:
    """The repository index of the one served model; `body` is the request's (tritonclient
    sends none; {"ready": true} asks for the ready models only)."""
    query = _json(body, "the index request") if body.strip() else {}
    if not isinstance(query, dict):
        raise _bad('the index request must be a JSON object, e.g. {"ready": true}')
    if _flag(query, "ready") and not ready:
        return []
    entry = {"name": name, "version": VERSION, "state": "READY"}
    if not ready:
        entry |= {"state": "UNAVAILABLE", "reason": "warming up"}
    return [entry]


def load_refused(served: str) -> RequestError:
    return _bad(
        f"this server serves one model, {served!r}, loaded when it started; it "
        "cannot load or unload models (run `cifar100 serve` with another MODEL instead)"
    )


def unknown_path(method: str, path: str) -> RequestError:
    """Any other /v2 path (`path` after /v2/), in the protocol's error shape."""
    message = f"{method} /v2/{path} is not part of this server's protocol"
    return RequestError(404, f"{message} (GET /v2 lists its extensions)", "not_found")


def decode_request(
    body: bytes, header_length: str | None, *, image_size: int, max_images: int, max_json_mb: float
) -> InferRequest:
    """The id, images (uint8 N, S, S, 3) and requested outputs of an inference request;
    `header_length` is its Inference-Header-Content-Length header, if any."""
    head, binary = _split(body, header_length)
    limit = int(max_json_mb * (1 << 20))
    if len(head) > limit:  # json.loads holds the interpreter (and the event loop) throughout
        raise RequestError(
            413,
            f"JSON part of {len(head)} bytes, over this server's limit of {limit} "
            f"({max_json_mb:g} MB, --max-json-mb); send the images as binary "
            "tensor data (tritonclient's binary_data=True, its default) or fewer per request",
            "too_large",
        )
    request = _json(head, "the inference request")
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise _bad('the inference request must be a JSON object with a list of "inputs"')
    if not isinstance(request.get("id", ""), str):
        raise _bad('"id" must be a string')
    binary_output = _flag(_parameters(request, "the request"), "binary_data_output")
    outputs = _outputs(request, binary_output)
    size = image_size
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
    check_count(shape[0], max_images)
    return InferRequest(request.get("id"), _pixels(tensor, shape, binary), outputs)


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


def _outputs(request: dict, default_binary: bool) -> list[Output]:
    """The requested outputs; none: all the model gives, as binary_data_output says (JSON by
    default)."""
    wanted = request.get("outputs") or []
    if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
        raise _bad('"outputs" must be a list of objects, each with a "name"')
    if not wanted:
        return [Output(name, default_binary, 0) for name in OUTPUTS]
    outputs = []
    for output in wanted:
        name = output.get("name")
        if name not in OUTPUTS:
            gives = f"{', '.join(OUTPUTS[:-1])} and {OUTPUTS[-1]}"
            raise _bad(f"unknown output {name!r}: this model gives {gives}")
        params = _parameters(output, f"output {name!r}")
        if "shared_memory_region" in params:
            raise _bad("shared memory is not supported: ask for the outputs in the response")
        k = params.get("classification", 0)
        if type(k) is not int or k < 0:
            raise _bad(f"output {name!r}: classification must be a number of classes, not {k!r}")
        if k and name in VERDICT_OUTPUTS:
            raise _bad(f"output {name!r}: classification is for the class scores "
                       f"({' and '.join(CLASS_SCORES)}), not one value per image")  # fmt: skip
        binary = _flag(params, "binary_data", default_binary)  # overrides binary_data_output
        outputs.append(Output(name, binary, k))
    return outputs


def output_tensors(logits: np.ndarray, scores: Scores) -> dict[str, np.ndarray]:
    """Each output's values of a batch: its raw `logits`, and their `scores` (the model's
    TrainedModel.scores: calibrated probabilities, the OOD score and the verdict, these two
    shaped (N, 1) as Triton gives them)."""
    return {
        LOGITS: logits,
        PROBABILITIES: scores.probabilities.numpy(),
        OOD_SCORE: scores.ood_score.numpy().astype(np.float32)[:, None],
        NONE_OF_THESE: scores.none_of_these.numpy()[:, None],
    }


def encode_response(
    request: InferRequest, model_name: str, tensors: dict[str, np.ndarray], classes: list[str]
) -> Encoded:
    """The inference response to `request`, of the model's `tensors` (output_tensors): JSON,
    or JSON then the binary outputs in their order, with the JSON part's length in a header of
    its own (as Triton answers them)."""
    outputs, blobs = [], []
    for output in request.outputs:
        values = tensors[output.name]
        if output.classes:
            values = _classifications(values, output.classes, classes)
        datatype = "BYTES" if output.classes else "BOOL" if values.dtype == bool else "FP32"
        entry = {"name": output.name, "datatype": datatype, "shape": list(values.shape)}
        if output.binary:
            blobs.append(_binary(values))
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = values.ravel().tolist()
        outputs.append(entry)
    head = {"id": request.id} if request.id is not None else {}
    head |= {"model_name": model_name, "model_version": VERSION, "outputs": outputs}
    text = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return Encoded(text, "application/json", {})
    blob = b"".join(blobs)
    return Encoded(text + blob, "application/octet-stream", {HEADER_LENGTH: str(len(text))})


def _classifications(scores: np.ndarray, k: int, classes: list[str]) -> np.ndarray:
    """(N, min(k, C)) strings "score:index:label", highest first: Triton's classification
    extension, with the score printed as Triton's std::to_string prints a float."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.array([[f"{row[i]:f}:{i}:{classes[i]}" for i in ix] for row, ix in zip(scores, top)])


def _binary(values: np.ndarray) -> bytes:
    """Binary tensor data: little-endian FP32, BOOL as one byte each, or BYTES as a 4-byte
    length before each string."""
    if values.dtype.kind == "U":
        return b"".join(struct.pack("<I", len(s)) + s for s in (v.encode() for v in values.flat))
    if values.dtype == bool:
        return values.astype(np.uint8).tobytes()
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
