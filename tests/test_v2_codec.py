"""The Open Inference Protocol's codec without HTTP: requests as Triton's own client writes them
decoded into images, each kind of bad request refused with its status and one line, and
responses encoded with a real exported model's output names, read back by Triton's client."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from cifar100.export.onnx_file import export_onnx
from cifar100.models.head import Classifier
from cifar100.serve import v2_codec as codec
from cifar100.serve.limits import RequestError

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed")
Client = httpclient.InferenceServerClient

SIZE, CLASSES = 32, [f"class_{i}" for i in range(10)]
ONE = SIZE * SIZE * 3
LIMITS = {"image_size": SIZE, "max_images": 4, "max_json_mb": 1.0}


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), np.uint8)


def images_input(pixels: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    return httpclient.InferInput("images", list(pixels.shape), "UINT8").set_data_from_numpy(
        pixels, binary_data=binary
    )


def decode(body: bytes, header_length: int | str | None = None, **limits) -> codec.InferRequest:
    length = None if header_length is None else str(header_length)
    return codec.decode_request(body, length, **(LIMITS | limits))


def refusal(call, *args, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as e:
        call(*args, **kwargs)
    return e.value


class TinyBackbone(nn.Sequential):
    """A backbone for the real classifier head that exports in a second or two."""

    out_features = 8

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """An ONNX export, as `cifar100 export --format onnx` writes it, in ONNX Runtime."""
    import onnxruntime

    torch.manual_seed(0)
    model = Classifier(TinyBackbone(), len(CLASSES), resize=2, head_units=16).eval()
    path = tmp_path_factory.mktemp("v2-codec") / "model.onnx"
    export_onnx(model, SIZE, {"classes": json.dumps(CLASSES)}, path, images(4))
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_tritonclients_binary_request_decodes_to_its_images():
    pixels = images(3)
    body, json_size = Client.generate_request_body([images_input(pixels)], request_id="r-1")
    request = decode(body, json_size)
    assert request.id == "r-1"
    assert request.images.dtype == np.uint8 and np.array_equal(request.images, pixels)
    # No outputs named: all four, as binary data (tritonclient asks with binary_data_output).
    names = ("probabilities", "logits", "ood_score", "none_of_these")
    assert request.outputs == [codec.Output(n, True, 0) for n in names]


def test_json_data_flat_or_nested_decodes_alike_with_the_outputs_asked_for():
    pixels = images(2, seed=1)
    outputs = [
        httpclient.InferRequestedOutput("logits", binary_data=False, class_count=3),
        httpclient.InferRequestedOutput("probabilities", binary_data=True),
    ]
    body, json_size = Client.generate_request_body(
        [images_input(pixels, binary=False)], outputs=outputs
    )
    assert json_size is None  # all JSON: no binary part
    request = decode(body)
    assert np.array_equal(request.images, pixels) and request.id is None
    assert request.outputs == [codec.Output("logits", False, 3),
                               codec.Output("probabilities", True, 0)]  # fmt: skip
    nested = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [2, SIZE, SIZE, 3],
                          "data": pixels.tolist()}]}  # fmt: skip
    assert np.array_equal(decode(json.dumps(nested).encode()).images, pixels)


def request_body(shape=(1, SIZE, SIZE, 3), datatype="UINT8", data=None, image=None, **fields):
    """A JSON inference request of one "images" input (its fields replaced by `image`)."""
    count = int(np.prod(shape))
    tensor = {"name": "images", "shape": list(shape), "datatype": datatype,
              "data": [0] * count if data is None else data} | (image or {})  # fmt: skip
    return json.dumps({"inputs": [tensor], **fields}).encode()


def binary_body(declared: int, sent: int) -> tuple[bytes, int]:
    """A request declaring `declared` bytes of binary tensor data, with `sent` bytes after its
    JSON part, and the JSON part's length."""
    tensor = {"name": "images", "shape": [1, SIZE, SIZE, 3], "datatype": "UINT8",
              "parameters": {"binary_data_size": declared}}  # fmt: skip
    head = json.dumps({"inputs": [tensor]}).encode()
    return head + bytes(sent), len(head)


SHAPE_SPEC = f"'images', UINT8 [N, {SIZE}, {SIZE}, 3]"
# each kind of bad request -> (body, header length, status, the whole line the client reads)
BAD = {
    "malformed JSON": (b'{"inputs": [', None, 400,
                       "malformed JSON in the inference request: Expecting value: line 1 column "
                       "13 (char 12)"),
    "nested too deeply": (b"[" * 100_000, None, 400,
                          "malformed JSON in the inference request: nested too deeply"),
    "binary data without its length": (binary_body(ONE, ONE)[0], None, 400, None),
    "length past the body": (request_body(), 10**9, 400,
                             f"{codec.HEADER_LENGTH} '1000000000': need the JSON part's length, "
                             f"0..{len(request_body())}"),
    "not an object": (b"[]", None, 400,
                      'the inference request must be a JSON object with a list of "inputs"'),
    "id not a string": (request_body(id=7), None, 400, '"id" must be a string'),
    "no inputs": (json.dumps({"inputs": []}).encode(), None, 400,
                  f"no inputs: this model takes one input, {SHAPE_SPEC}"),
    "unknown input": (json.dumps({"inputs": [{"name": "pixels"}]}).encode(), None, 400,
                      f"unknown input 'pixels': this model takes one input, {SHAPE_SPEC}"),
    "wrong datatype": (request_body(datatype="FP32"), None, 400,
                       f"input 'images' is 'FP32': this model takes {SHAPE_SPEC}"),
    "wrong shape": (request_body((1, 16, 16, 3)), None, 400,
                    f"input 'images' has shape [1, 16, 16, 3]: this model takes [N, {SIZE}, "
                    f"{SIZE}, 3], RGB pixels channels last at exactly {SIZE}x{SIZE} (resize on "
                    "the client, as for Triton)"),
    "no image": (request_body((0, SIZE, SIZE, 3)), None, 400, "no image in the request"),
    "too many images": (request_body((5, SIZE, SIZE, 3)), None, 413,
                        "5 images in one request, over this server's limit of 4 (--max-images); "
                        "split them"),
    "too few values": (request_body((2, SIZE, SIZE, 3), data=[0] * ONE), None, 400,
                       f"input 'images': \"data\" has {ONE} values, shape [2, {SIZE}, {SIZE}, 3] "
                       f"needs {2 * ONE}"),
    "values past 255": (request_body(data=[300] * ONE), None, 400,
                        "input 'images': \"data\" holds values 300..300, outside 0..255"),
    "float values": (request_body(data=[0.5] * ONE), None, 400,
                     "input 'images': \"data\" must be a list of integers 0..255, flat or nested"),
    "data and binary both": (request_body(image={"parameters": {"binary_data_size": ONE}}),
                             None, 400, "input 'images' needs \"data\" or "
                             "parameters.binary_data_size, not both"),
    "binary size mismatch": (*binary_body(ONE, 100), 400,
                             f"input 'images': binary_data_size is {ONE} but 100 bytes follow "
                             "the JSON part, whose length Inference-Header-Content-Length must "
                             "give"),
    "shared memory": (request_body(image={"parameters": {"shared_memory_region": "r"}}), None,
                      400, "shared memory is not supported: send the images as \"data\" or "
                      "binary data"),
    "unknown output": (request_body(outputs=[{"name": "features"}]), None, 400,
                       "unknown output 'features': this model gives probabilities, logits, "
                       "ood_score and none_of_these"),
    "negative classification": (
        request_body(outputs=[{"name": "logits", "parameters": {"classification": -1}}]), None,
        400, "output 'logits': classification must be a number of classes, not -1"),
    "flag not a boolean": (request_body(parameters={"binary_data_output": 1}), None, 400,
                           "binary_data_output must be true or false, not 1"),
    "parameters not an object": (request_body(parameters=[]), None, 400,
                                 'the request: "parameters" must be an object'),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_each_bad_request_is_refused_with_its_status_and_one_line(case):
    body, header_length, status, line = BAD[case]
    e = refusal(decode, body, header_length)
    assert e.status == status and e.kind == ("too_many" if status == 413 else "bad_request")
    message = str(e)
    assert message and "\n" not in message
    if line is not None:
        assert message == line


def test_binary_data_sent_without_its_length_is_told_which_header_to_send():
    body, length = binary_body(ONE, ONE)
    e = refusal(decode, body)
    assert str(e).startswith("malformed JSON in the inference request: Extra data")
    assert str(e).endswith(f"; if binary tensor data follows, send {codec.HEADER_LENGTH}: {length}")
    e = refusal(decode, request_body(), "12x")
    body_size = len(request_body())
    assert str(e) == f"{codec.HEADER_LENGTH} '12x': need the JSON part's length, 0..{body_size}"


def test_a_json_part_over_the_limit_is_refused_before_it_is_parsed():
    body = b"{" + b" " * (1 << 20)  # not JSON: refused for its size, never parsed
    e = refusal(decode, body, max_json_mb=1.0)
    assert e.status == 413 and e.kind == "too_large"
    assert str(e) == (
        f"JSON part of {len(body)} bytes, over this server's limit of {1 << 20} (1 MB, "
        "--max-json-mb); send the images as binary tensor data (tritonclient's "
        "binary_data=True, its default) or fewer per request"
    )
    # Only the JSON part counts: the binary tensor data after it may be larger.
    pixels = images(2)
    body, json_size = Client.generate_request_body([images_input(pixels)])
    assert np.array_equal(decode(body, json_size, max_json_mb=json_size / (1 << 20)).images, pixels)


def test_model_version_and_encoding_checks():
    assert codec.check_model("cifar100", None, "cifar100") is None
    assert codec.check_model("cifar100", "1", "cifar100") is None
    e = refusal(codec.check_model, "other", None, "cifar100")
    assert (e.status, str(e)) == (404, "unknown model 'other': this server serves 'cifar100'")
    e = refusal(codec.check_model, "cifar100", "2", "cifar100")
    assert (e.status, str(e)) == (404, "model 'cifar100' has no version '2', only '1'")
    codec.check_encoding(" Identity ")
    e = refusal(codec.check_encoding, " GZIP")
    assert (e.status, str(e)) == (415, "Content-Encoding gzip: send it uncompressed")


def test_repository_index_and_refusals():
    ready = [{"name": "m", "version": "1", "state": "READY"}]
    assert codec.repository_index(b"", "m", True) == ready
    assert codec.repository_index(b'{"ready": true}', "m", True) == ready
    assert codec.repository_index(b'{"ready": true}', "m", False) == []
    assert codec.repository_index(b" ", "m", False) == [
        {"name": "m", "version": "1", "state": "UNAVAILABLE", "reason": "warming up"}
    ]
    e = refusal(codec.repository_index, b"[1]", "m", True)
    assert str(e) == 'the index request must be a JSON object, e.g. {"ready": true}'
    assert "serves one model, 'm'" in str(codec.load_refused("m"))
    unknown = codec.unknown_path("GET", "models/m/stats")
    assert unknown.status == 404 and str(unknown) == (
        "GET /v2/models/m/stats is not part of this server's protocol (GET /v2 lists its "
        "extensions)"
    )


@pytest.mark.slow
def test_metadata_names_the_exported_graphs_tensors(graph):
    metadata = codec.model_metadata("m", SIZE, len(CLASSES), "onnx")
    assert metadata.platform == "onnxruntime_onnx" and metadata.versions == ["1"]
    served = [(t.name, t.datatype, t.shape[1:]) for t in metadata.inputs + metadata.outputs]
    # A graph's (N,) is Triton's [-1, 1] (dims [1], reshape []): a config's dims are never empty
    exported = [(t.name, t.type, t.shape[1:] or [1])
                for t in graph.get_inputs() + graph.get_outputs()]  # fmt: skip
    types = {"UINT8": "tensor(uint8)", "FP32": "tensor(float)", "BOOL": "tensor(bool)"}
    assert [(n, types[d], s) for n, d, s in served] == exported
    assert metadata.model_dump()["inputs"] == [
        {"name": "images", "datatype": "UINT8", "shape": [-1, SIZE, SIZE, 3]}
    ]
    config = codec.triton_config("m", SIZE, len(CLASSES), "onnx", 64)
    assert [o["name"] for o in config["output"]] == [o.name for o in graph.get_outputs()]
    assert codec.server_metadata("9.9").model_dump() == {
        "name": "cifar100", "version": "9.9", "extensions": codec.EXTENSIONS
    }  # fmt: skip


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_response_is_what_the_exported_model_computes_as_tritonclient_reads_it(graph, binary):
    pixels = images(3, seed=2)
    names = [o.name for o in graph.get_outputs()]
    computed = dict(zip(names, graph.run(names, {"images": pixels})))
    # the graph's per-image (N,) outputs as Triton answers them: [N, 1]
    tensors = {n: v if v.ndim == 2 else v[:, None] for n, v in computed.items()}
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
    body, json_size = Client.generate_request_body(
        [images_input(pixels)], outputs=outputs, request_id="r-2"
    )
    request = decode(body, json_size)
    answer = codec.encode_response(request, "m", tensors, CLASSES)
    length = answer.headers.get(codec.HEADER_LENGTH)
    assert (length is not None) == binary
    assert answer.media_type == ("application/octet-stream" if binary else "application/json")
    result = Client.parse_response_body(answer.body, header_length=length)
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == ("r-2", "m", "1")
    assert [o["name"] for o in response["outputs"]] == names
    for name in names:
        got, want = result.as_numpy(name), tensors[name]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.allclose(got, want, atol=1e-6)
    assert np.array_equal(result.as_numpy("logits"), computed["logits"])
    assert result.as_numpy("probabilities").shape == (3, len(CLASSES))
    assert result.as_numpy("none_of_these").shape == (3, 1)


def test_the_classification_extension_and_a_response_without_an_id(graph):
    pixels = images(2, seed=3)
    logits = graph.run(["logits"], {"images": pixels})[0]
    probabilities = torch.from_numpy(logits).softmax(1).numpy()
    request = codec.InferRequest(None, pixels, [codec.Output("probabilities", False, 3),
                                                codec.Output("logits", True, 50)])  # fmt: skip
    tensors = {"logits": logits, "probabilities": probabilities}
    answer = codec.encode_response(request, "m", tensors, CLASSES)
    length = int(answer.headers[codec.HEADER_LENGTH])
    head = json.loads(answer.body[:length])
    assert "id" not in head
    top = head["outputs"][0]
    assert (top["datatype"], top["shape"]) == ("BYTES", [2, 3])
    for row, strings in zip(probabilities, np.array(top["data"]).reshape(2, 3)):
        parsed = [s.split(":") for s in strings]  # Triton's "score:index:label"
        assert [int(i) for _, i, _ in parsed] == list(np.argsort(-row, kind="stable")[:3])
        for score, index, label in parsed:
            assert re.fullmatch(r"\d\.\d{6}", score)  # as C++'s std::to_string prints it
            assert abs(float(score) - row[int(index)]) < 1e-6 and label == CLASSES[int(index)]
    every = Client.parse_response_body(answer.body, header_length=str(length)).as_numpy("logits")
    assert every.shape == (2, len(CLASSES))  # at most the model's classes
    labels = [s.decode().split(":")[2] for s in every[0]]
    assert labels == [CLASSES[i] for i in np.argsort(-logits[0], kind="stable")]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_the_verdict_outputs_as_tritonclient_reads_them(binary):
    """ood_score FP32 and none_of_these BOOL, [N, 1] as Triton gives a graph's (N,) output
    (binary: one byte per BOOL); the probabilities calibrated: the model's scores, as given."""
    from cifar100.runtime.ood_rule import OodRule
    from cifar100.runtime.trust import score_logits

    logits = np.random.default_rng(4).normal(0, 2, (4, len(CLASSES))).astype(np.float32)
    scores = score_logits(torch.from_numpy(logits), 1.7, OodRule(threshold=1.5))
    assert 0 < int(scores.none_of_these.sum()) < 4  # both verdicts
    tensors = codec.output_tensors(logits, scores)
    names = codec.OUTPUTS
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
    body, json_size = Client.generate_request_body([images_input(images(4))], outputs=outputs)
    request = decode(body, json_size)
    answer = codec.encode_response(request, "m", tensors, CLASSES)
    length = answer.headers.get(codec.HEADER_LENGTH)
    result = Client.parse_response_body(answer.body, header_length=length)
    head = {o["name"]: o for o in result.get_response()["outputs"]}
    assert [(head[n]["datatype"], head[n]["shape"]) for n in names[2:]] == [
        ("FP32", [4, 1]), ("BOOL", [4, 1])
    ]  # fmt: skip
    if binary:
        assert head["none_of_these"]["parameters"]["binary_data_size"] == 4
    assert np.allclose(result.as_numpy("probabilities"), scores.probabilities.numpy())
    assert np.allclose(result.as_numpy("ood_score")[:, 0], scores.ood_score.numpy())
    verdict = result.as_numpy("none_of_these")
    assert verdict.dtype == np.bool_ and verdict[:, 0].tolist() == scores.none_of_these.tolist()
    # the classification extension is for the class scores only
    asked = request_body(outputs=[{"name": "ood_score", "parameters": {"classification": 2}}])
    e = refusal(decode, asked)
    assert str(e) == ("output 'ood_score': classification is for the class scores "
                      "(probabilities and logits), not one value per image")  # fmt: skip


def test_the_verdict_outputs_are_listed_in_a_valid_triton_config():
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import json_format

    metadata = codec.model_metadata("m", SIZE, len(CLASSES), "torch")
    assert [(t.name, t.datatype, t.shape) for t in metadata.outputs] == [
        ("probabilities", "FP32", [-1, 10]), ("logits", "FP32", [-1, 10]),
        ("ood_score", "FP32", [-1, 1]), ("none_of_these", "BOOL", [-1, 1]),
    ]  # fmt: skip
    config = codec.triton_config("m", SIZE, len(CLASSES), "torch", 64)
    parsed = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    verdicts = [o for o in parsed.output if o.name in ("ood_score", "none_of_these")]
    assert [(o.data_type, list(o.dims), o.HasField("reshape")) for o in verdicts] == [
        (model_config_pb2.TYPE_FP32, [1], True), (model_config_pb2.TYPE_BOOL, [1], True)
    ]  # fmt: skip
    assert all(list(o.reshape.shape) == [] for o in verdicts)  # the graph's own (N,)
