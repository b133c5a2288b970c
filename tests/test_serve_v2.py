"""The Open Inference Protocol under /v2 of a real `cifar100 serve`, spoken by Triton's own
client (tritonclient.http): metadata, readiness, the repository index, inference with JSON and
binary tensor data, the classification extension, and one clear line for each refusal."""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import cifar100
from cifar100.serve.app import create_app
from cifar100.serve.settings import ServeSettings
from cifar100.serve.v2_codec import CLASS_SCORES, OUTPUTS, model_metadata
from serve_server import running_server
from synthetic_cifar import CIFAR10_CLASSES

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

SIZE, CLASSES = 32, len(CIFAR10_CLASSES)
HEADER = "Inference-Header-Content-Length"
INFER = "v2/models/cifar100/infer"


@pytest.fixture(scope="module")
def run(tiny_run_copy):
    return tiny_run_copy


@pytest.fixture(scope="module")
def model(run):
    return cifar100.load(run, device="cpu")


@pytest.fixture(scope="module")
def server(run):
    with running_server(run, "--device", "cpu") as server:
        yield server
    assert server.returncode == 0  # SIGTERM: the requests in flight finished, exit 0


@pytest.fixture(scope="module")
def client(server):
    client = triton_client(server)
    yield client
    client.close()


def triton_client(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url=server.url.removeprefix("http://").rstrip("/"))


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), np.uint8)


def images_input(pixels: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    return httpclient.InferInput("images", list(pixels.shape), "UINT8").set_data_from_numpy(
        pixels, binary_data=binary
    )


def lower(headers: dict) -> dict:
    return {k.lower(): v for k, v in headers.items()}


@pytest.mark.slow
def test_server_and_model_metadata_as_tritonclient_reads_them(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cifar100") and client.is_model_ready("cifar100", "1")
    assert not client.is_model_ready("other") and not client.is_model_ready("cifar100", "2")
    server = client.get_server_metadata()
    assert server["name"] == "cifar100" and server["version"] == cifar100.__version__
    assert {"binary_tensor_data", "classification", "model_repository"} <= set(server["extensions"])
    scores = [{"name": n, "datatype": "FP32", "shape": [-1, CLASSES]} for n in CLASS_SCORES]
    scores += [
        {"name": "ood_score", "datatype": "FP32", "shape": [-1, 1]},
        {"name": "none_of_these", "datatype": "BOOL", "shape": [-1, 1]},
    ]
    for version in ("", "1"):
        assert client.get_model_metadata("cifar100", version) == {
            "name": "cifar100",
            "versions": ["1"],
            "platform": "pytorch_libtorch",
            "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, SIZE, SIZE, 3]}],
            "outputs": scores,
        }
    with pytest.raises(InferenceServerException, match="unknown model 'other'") as e:
        client.get_model_metadata("other")
    assert e.value.status() == "404"
    # An extension this server lacks: still the protocol's error object, which tritonclient reads.
    with pytest.raises(InferenceServerException, match="/v2/models/cifar100/stats is not") as e:
        client.get_inference_statistics("cifar100")
    assert e.value.status() == "404"


@pytest.mark.slow
def test_names_are_the_onnx_exports_so_a_client_moves_to_triton_unchanged(run, client, tmp_path):
    """The served model's tensors, as a v2 client sees them, are the exported graph's own."""
    import onnxruntime

    from cifar100 import cli

    out = tmp_path / "model.onnx"
    argv = ["export", str(run), "--format", "onnx", "--out", str(out)]
    assert cli.main([*argv, "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    graph = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    served = client.get_model_metadata("cifar100")
    assert [(t["name"], t["shape"][1:]) for t in served["inputs"]] == [
        (t.name, t.shape[1:]) for t in graph.get_inputs()
    ]
    assert [t["name"] for t in served["outputs"]] == [t.name for t in graph.get_outputs()]
    for runtime, platform in [("torch", "pytorch_libtorch"), ("onnx", "onnxruntime_onnx")]:
        assert model_metadata("cifar100", SIZE, CLASSES, runtime).platform == platform


def test_model_config_is_a_valid_triton_model_config(client):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import json_format

    config = client.get_model_config("cifar100")
    parsed = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    assert parsed.name == "cifar100" and parsed.max_batch_size == 64  # --max-images
    assert parsed.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert list(parsed.input[0].dims) == [SIZE, SIZE, 3]
    assert parsed.input[0].format == model_config_pb2.ModelInput.FORMAT_NHWC
    assert [(o.name, list(o.dims)) for o in parsed.output] == [
        (n, [CLASSES]) for n in CLASS_SCORES
    ] + [
        ("ood_score", [1]), ("none_of_these", [1])
    ]  # fmt: skip
    assert parsed.output[3].data_type == model_config_pb2.TYPE_BOOL


def test_repository_index_names_the_model_and_load_is_refused(client, server):
    index = client.get_model_repository_index()
    assert index == [{"name": "cifar100", "version": "1", "state": "READY"}]
    status, body, _ = server.post("v2/repository/index", b'{"ready": true}', "application/json")
    assert status == 200 and json.loads(body) == index
    for call in (client.load_model, client.unload_model):
        with pytest.raises(InferenceServerException, match="serves one model, 'cifar100'") as e:
            call("cifar100")
        assert e.value.status() == "400"


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_infer_answers_what_the_model_answers_in_process(client, model, binary_in, binary_out):
    pixels = images(5, seed=1)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in OUTPUTS]
    result = client.infer("cifar100", [images_input(pixels, binary_in)], outputs=outputs,
                          request_id="req-7")  # fmt: skip
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == (
        "req-7", "cifar100", "1"
    )  # fmt: skip
    assert [o["name"] for o in response["outputs"]] == list(OUTPUTS)
    assert all(("data" in o) != binary_out for o in response["outputs"])
    scores = model.scores(model.logits(pixels))  # calibrated, with the OOD score and verdict
    assert np.allclose(result.as_numpy("ood_score")[:, 0], scores.ood_score, atol=1e-5)
    assert result.as_numpy("none_of_these")[:, 0].tolist() == scores.none_of_these.tolist()
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (5, CLASSES)
    assert np.allclose(probabilities, model.probabilities(pixels), atol=1e-5)
    assert np.allclose(result.as_numpy("logits"), model.logits(pixels).numpy(), atol=1e-5)


def test_without_outputs_both_come_as_binary_data_output_asks(client, model):
    pixels = images(2, seed=2)
    # No outputs named: tritonclient asks for binary_data_output; the versions path as well.
    result = client.infer("cifar100", [images_input(pixels)], model_version="1")
    outputs = result.get_response()["outputs"]
    assert [o["name"] for o in outputs] == list(OUTPUTS)
    sizes = [2 * CLASSES * 4] * 2 + [2 * 4, 2]  # FP32 each; BOOL a byte each
    assert [o["parameters"]["binary_data_size"] for o in outputs] == sizes
    assert np.allclose(result.as_numpy("probabilities"), model.probabilities(pixels), atol=1e-5)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension_gives_the_top_classes_as_triton_does(client, model, binary):
    pixels = images(4, seed=3)
    outputs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=3),
        httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=50),
    ]
    result = client.infer("cifar100", [images_input(pixels)], outputs=outputs)
    assert {o["datatype"] for o in result.get_response()["outputs"]} == {"BYTES"}
    top, all_logits = result.as_numpy("probabilities"), result.as_numpy("logits")
    assert top.shape == (4, 3) and all_logits.shape == (4, CLASSES)  # at most C classes
    for row, strings in zip(model.probabilities(pixels), top):
        parsed = [(s.decode() if isinstance(s, bytes) else s).split(":") for s in strings]
        assert [int(i) for _, i, _ in parsed] == list(np.argsort(-row, kind="stable")[:3])
        for score, index, label in parsed:
            assert re.fullmatch(r"\d\.\d{6}", score)  # C++ std::to_string, as Triton prints it
            assert abs(float(score) - row[int(index)]) < 1e-5
            assert label == model.classes[int(index)]


def test_json_request_with_nested_data_gets_a_json_response(server, model):
    pixels = images(2, seed=4)
    image = {"name": "images", "shape": [2, SIZE, SIZE, 3], "datatype": "UINT8"}
    request = {"id": "nested", "inputs": [image | {"data": pixels.tolist()}],
               "outputs": [{"name": "probabilities"}]}  # fmt: skip
    path = "v2/models/cifar100/versions/1/infer"
    status, body, headers = server.post(path, json.dumps(request).encode(), "application/json")
    assert status == 200, body
    assert lower(headers)["content-type"] == "application/json"
    assert HEADER.lower() not in lower(headers)
    answer = json.loads(body)
    assert answer["id"] == "nested" and len(answer["outputs"]) == 1
    output = answer["outputs"][0]
    assert [output[k] for k in ("name", "datatype", "shape")] == ["probabilities", "FP32", [2, 10]]
    got = np.array(output["data"], np.float32).reshape(2, CLASSES)
    assert np.allclose(got, model.probabilities(pixels), atol=1e-5)


def test_binary_response_is_framed_as_triton_frames_it(server, model):
    pixels = images(2, seed=5)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([images_input(pixels)])
    status, raw, headers = server.post(INFER, body, "application/octet-stream",
                                       **{HEADER: str(json_size)})  # fmt: skip
    assert status == 200, raw
    headers = lower(headers)
    assert headers["content-type"] == "application/octet-stream"
    length = int(headers[HEADER.lower()])
    head = json.loads(raw[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert sizes == [2 * CLASSES * 4] * 2 + [2 * 4, 2] and len(raw) == length + sum(sizes)
    probabilities = np.frombuffer(raw[length : length + sizes[0]], "<f4").reshape(2, CLASSES)
    assert np.allclose(probabilities, model.probabilities(pixels), atol=1e-5)
    verdict = np.frombuffer(raw[len(raw) - 2 :], np.uint8)  # BOOL: a byte each, 0 or 1
    assert verdict.tolist() == model.scores(model.logits(pixels)).none_of_these.int().tolist()


def image_request(shape=(1, SIZE, SIZE, 3), datatype="UINT8", data=None, **fields) -> bytes:
    count = int(np.prod(shape))
    image = {"name": "images", "shape": list(shape), "datatype": datatype,
             "data": [0] * count if data is None else data}  # fmt: skip
    return json.dumps({"inputs": [image], **fields}).encode()


def binary_request(declared: int, sent: int, header: bool = True) -> tuple[bytes, dict]:
    image = {"name": "images", "shape": [1, SIZE, SIZE, 3], "datatype": "UINT8",
             "parameters": {"binary_data_size": declared}}  # fmt: skip
    head = json.dumps({"inputs": [image]}).encode()
    return head + bytes(sent), {HEADER: str(len(head))} if header else {}


ONE = SIZE * SIZE * 3
BAD = {  # what a client gets wrong -> (path, body, headers, status, words the answer must say)
    "wrong shape": (INFER, image_request((1, 16, 16, 3)), {}, 400,
                    ["shape [1, 16, 16, 3]", "exactly 32x32"]),
    "wrong datatype": (INFER, image_request(datatype="FP32"), {}, 400, ["'FP32'", "UINT8"]),
    "bad JSON": (INFER, b'{"inputs": [', {}, 400, ["malformed JSON"]),
    "too few values": (INFER, image_request((2, SIZE, SIZE, 3), data=[0] * ONE), {}, 400,
                       [f"{ONE} values", f"needs {2 * ONE}"]),
    "values past 255": (INFER, image_request(data=[300] * ONE), {}, 400, ["0..255"]),
    "float values": (INFER, image_request(data=[0.5] * ONE), {}, 400, ["integers"]),
    "no image": (INFER, image_request((0, SIZE, SIZE, 3)), {}, 400, ["no image"]),
    "no input": (INFER, json.dumps({"inputs": []}).encode(), {}, 400, ["no inputs", "'images'"]),
    "unknown input": (INFER, json.dumps({"inputs": [{"name": "pixels"}]}).encode(), {}, 400,
                      ["unknown input 'pixels'"]),
    "unknown output": (INFER, image_request(outputs=[{"name": "features"}]), {}, 400,
                       ["unknown output 'features'",
                        "probabilities, logits, ood_score and none_of_these"]),
    "binary size mismatch": (INFER, *binary_request(ONE, 100), 400,
                             [f"binary_data_size is {ONE} but 100 bytes follow"]),
    "binary without its header": (INFER, *binary_request(ONE, ONE, header=False), 400,
                                  ["malformed JSON", HEADER]),
    "header past the body": (INFER, image_request(), {HEADER: "99999999"}, 400, [HEADER]),
    "compressed": (INFER, image_request(), {"Content-Encoding": "gzip"}, 415,
                   ["gzip", "uncompressed"]),
    "unknown model": ("v2/models/other/infer", image_request(), {}, 404,
                      ["unknown model 'other'", "'cifar100'"]),
    "unknown version": ("v2/models/cifar100/versions/2/infer", image_request(), {}, 404,
                        ["no version '2'"]),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_a_bad_request_gets_one_clear_line(server, case):
    path, body, headers, status, words = BAD[case]
    got, answer, _ = server.post(path, body, "application/json", **headers)
    assert got == status, answer
    message = json.loads(answer)["error"]  # the protocol's error object
    assert message and "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message, message


def test_bad_requests_do_not_disturb_good_ones_beside_them(server, model):
    pixels = images(3, seed=6)
    requested = [httpclient.InferRequestedOutput("probabilities")]
    good_body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [images_input(pixels)], outputs=requested
    )
    bad_bodies = [binary_request(ONE, 5), (image_request((1, 8, 8, 3)), {})]

    def good() -> np.ndarray:
        status, raw, headers = server.post(INFER, good_body, "application/octet-stream",
                                           **{HEADER: str(json_size)})  # fmt: skip
        assert status == 200, raw
        length = lower(headers)[HEADER.lower()]
        result = httpclient.InferenceServerClient.parse_response_body(raw, header_length=length)
        return result.as_numpy("probabilities")

    def bad(i: int) -> int:
        body, headers = bad_bodies[i % 2]
        return server.post(INFER, body, "application/json", **headers)[0]

    before = metrics(server)
    with ThreadPoolExecutor(8) as pool:
        jobs = [(pool.submit(good), pool.submit(bad, i)) for i in range(12)]
        results = [(g.result(), b.result()) for g, b in jobs]
    expected = model.probabilities(pixels)
    for probabilities, status in results:
        assert np.allclose(probabilities, expected, atol=1e-5) and status == 400
    after = metrics(server)
    assert after["images"] - before["images"] == 12 * 3  # only the good requests' images
    assert after["bad_request"] - before["bad_request"] == 12


def metrics(server) -> dict[str, float]:
    status, body, _ = server.get("metrics")
    assert status == 200
    text = body.decode()

    def value(pattern: str) -> float:
        found = re.search(rf"^{pattern} (\S+)$", text, re.M)
        return float(found[1]) if found else 0.0

    return {
        "images": value("cifar100_images_total"),
        "bad_request": value(r'cifar100_errors_total\{kind="bad_request"\}'),
    }


@pytest.mark.slow
def test_name_and_limits_set_on_the_command_line(run, model):
    options = ["--name", "tiny-c10", "--max-request-mb", "0.01", "--max-images", "2"]
    with running_server(run, "--device", "cpu", *options) as server:
        client = triton_client(server)
        try:
            index = client.get_model_repository_index()  # how a client discovers the name
            assert [entry["name"] for entry in index] == ["tiny-c10"]
            name = index[0]["name"]
            assert client.is_model_ready(name) and not client.is_model_ready("cifar100")
            assert client.get_model_metadata(name)["name"] == name
            pixels = images(2, seed=7)
            result = client.infer(name, [images_input(pixels)])
            assert result.get_response()["model_name"] == name
            assert np.allclose(result.as_numpy("probabilities"), model.probabilities(pixels),
                               atol=1e-5)  # fmt: skip
            refusals = [
                ("cifar100", images(1), "404", "unknown model 'cifar100'"),
                (name, images(3), "413", "--max-images"),  # 9 KiB: under the byte limit
                (name, images(4), "413", "--max-request-mb"),  # 12 KiB > 0.01 MB
            ]
            for model_name, many, status, words in refusals:
                with pytest.raises(InferenceServerException) as e:
                    client.infer(model_name, [images_input(many)])
                assert e.value.status() == status and words in e.value.message()
        finally:
            client.close()
    assert server.returncode == 0


def test_not_ready_until_warmed_up(model):
    import httpx

    async def ask() -> list[httpx.Response]:
        # httpx's ASGI transport runs no lifespan: the app never warms up, so is never ready.
        app = create_app(model, ServeSettings(name="cold"))
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cold") as http:
            return [
                await http.get("/v2/health/live"),
                await http.get("/v2/health/ready"),
                await http.get("/v2/models/cold/ready"),
                await http.post("/v2/repository/index"),
                await http.post("/v2/repository/index", json={"ready": True}),
            ]

    live, ready, model_ready, index, ready_index = asyncio.run(ask())
    assert live.status_code == 200 and ready.status_code == model_ready.status_code == 503
    assert model_ready.json() == {"name": "cold", "ready": False}
    assert index.json() == [
        {"name": "cold", "version": "1", "state": "UNAVAILABLE", "reason": "warming up"}
    ]
    assert ready_index.json() == []
