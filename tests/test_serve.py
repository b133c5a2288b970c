"""`cifar100 serve`: a real server on 127.0.0.1 answering /predict as `cifar100 predict` does,
batching concurrent requests, refusing bad ones with one clear 4xx, and stopping cleanly."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from cifar100 import cli
from serve_server import multipart, posting, running_server


@pytest.fixture(scope="module")
def run(tiny_run_copy):
    return tiny_run_copy


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Photos of other sizes and formats, as users send them."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)).save(root / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), np.uint8), "RGBA").save(root / "b.png")
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}, root


@pytest.fixture(scope="module")
def server(run):
    with running_server(run, "--max-batch", "8", "--batch-wait-ms", "20") as s:
        yield s
    assert s.returncode == 0


def predict_cli(run, paths, capsys) -> list[dict]:
    capsys.readouterr()
    assert cli.main(["predict", str(run), *map(str, paths), "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.slow
def test_predict_answers_what_the_cli_prints(server, run, images, capsys):
    files, root = images
    body, content_type = multipart(list(files.items()))
    status, answer, _ = server.post("predict", body, content_type)
    assert status == 200
    answer = json.loads(answer)
    want = predict_cli(run, [root / n for n in files], capsys)
    assert [a["path"] for a in answer] == list(files)
    for got, expected in zip(answer, want):
        assert got["predictions"] == expected["predictions"]  # same classes, same rounding
    # one raw image body; ?k=
    status, raw, _ = server.post("predict?k=2", files["a.jpg"], "image/jpeg")
    assert status == 200 and json.loads(raw)[0]["predictions"] == want[0]["predictions"][:2]


def test_the_model_card_and_the_openapi_docs(server):
    card = server.json("model")
    assert card["backbone"] == "efficientnet_lite0" and card["num_classes"] == 10
    assert card["image_size"] == 32 and card["test_top1"] is not None and card["trained_at"]
    paths = server.json("openapi.json")["paths"]
    assert "/predict" in paths and "/explain" in paths
    answer = paths["/predict"]["post"]["responses"]["200"]["content"]["application/json"]
    assert {"ood_score", "none_of_these"} <= set(answer["schema"]["items"]["properties"])
    assert server.get("docs")[0] == 200


def one_line(answer: bytes) -> str:
    message = json.loads(answer)["error"]
    assert "\n" not in message and "Traceback" not in message
    return message


def test_bad_requests_are_one_clear_4xx_naming_the_part(server, images):
    files, _ = images
    good = files["a.jpg"]
    cases = [
        ([("notes.txt", b"just some text")], 422, "notes.txt: not a readable image"),
        ([("cut.jpg", good[: len(good) // 3])], 422, "cut.jpg: not a readable image"),
        ([("a.jpg", good), ("empty.png", b"")], 422, "empty.png"),
        ([], 400, "no image"),
    ]
    for parts, status, words in cases:
        body, content_type = multipart(parts)
        got, answer, _ = server.post("predict", body, content_type)
        assert got == status and words in one_line(answer), (parts, got, answer)
    got, answer, _ = server.post("predict", b"{}", "application/json")
    assert got == 415 and "multipart" in one_line(answer)
    got, answer, _ = server.post("predict", b"--x\r\nbroken", "multipart/form-data; boundary=x")
    assert got in (400, 422) and one_line(answer)


@pytest.mark.slow
def test_limits_protect_the_server(run, images):
    files, _ = images
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 200, 3), np.uint8)).save(
        big, "PNG"
    )
    options = ["--max-request-mb", "0.05", "--max-images", "2", "--max-pixels", "2000"]
    with running_server(run, *options) as s:
        body, content_type = multipart([("big.png", big.getvalue())])
        status, answer, _ = s.post("predict", body, content_type)
        assert status == 413 and "--max-request-mb" in one_line(answer)
        body, content_type = multipart([(f"{i}.jpg", files["a.jpg"]) for i in range(3)])
        status, answer, _ = s.post("predict", body, content_type)
        assert status == 413 and "3 images" in one_line(answer)
        body, content_type = multipart([("wide.jpg", files["a.jpg"])])  # 64x48 > 2000 pixels
        status, answer, _ = s.post("predict", body, content_type)
        assert status == 413 and "wide.jpg: 64x48 = 3072 pixels" in one_line(answer)
        # a chunked body with no length is cut off too
        status = _chunked_post(s.url, 200_000)
        assert status == 413
    assert s.returncode == 0


def _chunked_post(url: str, size: int) -> int:
    import http.client
    import urllib.parse

    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    chunks = (b"\xff" * 10_000 for _ in range(size // 10_000))
    conn.request("POST", "/predict", body=chunks, headers={"Content-Type": "image/jpeg"},
                 encode_chunked=True)  # fmt: skip
    status = conn.getresponse().status
    conn.close()
    return status


def test_a_bad_request_does_not_disturb_one_in_flight(server, images):
    files, _ = images
    good, content_type = multipart([("a.jpg", files["a.jpg"])])
    bad, _ = multipart([("bad.jpg", b"\xff\xd8 not really")])
    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(server.post, "predict", good if i % 2 else bad, content_type)
                for i in range(16)]  # fmt: skip
        statuses = [j.result()[0] for j in jobs]
    assert statuses == [422, 200] * 8


def test_concurrent_requests_are_batched_and_counted(server, images):
    files, _ = images
    body, content_type = multipart([("a.jpg", files["a.jpg"])])

    def batches() -> tuple[float, float]:
        text = server.get("metrics")[1].decode()
        count = float(_metric(text, "cifar100_batch_images_count"))
        total = float(_metric(text, "cifar100_batch_images_sum"))
        return count, total

    before = batches()
    with ThreadPoolExecutor(16) as pool:
        statuses = [r[0] for r in pool.map(lambda _: server.post("predict", body, content_type),
                                           range(32))]  # fmt: skip
    assert statuses == [200] * 32
    after = batches()
    calls, images_run = after[0] - before[0], after[1] - before[1]
    assert images_run == 32 and calls < 32  # some requests shared a model call
    text = server.get("metrics")[1].decode()
    for name in (
        "cifar100_requests_total",
        "cifar100_request_seconds_bucket",
        "cifar100_queue_images",
        "cifar100_errors_total",
        "cifar100_images_total",
    ):
        assert name in text, name  # fmt: skip


def _metric(text: str, name: str) -> str:
    return next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " "))


def _requests_by_route(server) -> dict[str, float]:
    """cifar100_requests_total summed over statuses, by route label."""
    text = server.get("metrics")[1].decode()
    found = re.findall(r'^cifar100_requests_total\{route="([^"]*)",status="\d+"\} (\S+)$',
                       text, re.MULTILINE)  # fmt: skip
    totals: dict[str, float] = {}
    for route, value in found:
        totals[route] = totals.get(route, 0.0) + float(value)
    return totals


def test_metrics_count_the_api_docs_under_their_own_routes(server):
    """/docs, /openapi.json and the docs' files are routes of their own, not "unmatched"
    (FastAPI leaves its own Starlette routes and mounts out of the request's scope)."""
    wanted = {"docs": "/docs", "openapi.json": "/openapi.json",
              "docs/assets/swagger-ui.css": "/docs/assets/{path}"}  # fmt: skip
    before = _requests_by_route(server)
    statuses = {path: server.get(path)[0] for path in [*wanted, "no/such/page"]}
    expected = {**dict.fromkeys(wanted.values(), 1), "unmatched": 1}  # the 404 alone
    # A request is counted once its response has ended on the server's side, which for a
    # file (the docs' CSS, closed in a worker thread) may be just after the client has it all.
    deadline = time.monotonic() + 5
    while True:
        after = _requests_by_route(server)
        counted = {route: after.get(route, 0) - before.get(route, 0)
                   for route in [*wanted.values(), "unmatched"]}  # fmt: skip
        if counted == expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert counted == expected
    assert statuses == {**dict.fromkeys(wanted, 200), "no/such/page": 404}


@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after(run, images):
    files, _ = images
    body, content_type = multipart([("a.jpg", files["a.jpg"])] * 4)
    with running_server(run, "--max-batch", "1", "--max-queue", "4") as s:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: s.post("predict", body, content_type), range(24)))
        assert {a[0] for a in answers} == {200, 503}  # no 500, no growing queue
        refused = next(a for a in answers if a[0] == 503)
        headers = {k.lower(): v for k, v in refused[2].items()}
        assert int(headers["retry-after"]) >= 1 and "busy" in one_line(refused[1])
        # and then it serves again
        assert s.post("predict", body, content_type)[0] == 200


@pytest.mark.slow
def test_health_stays_responsive_under_load(server, images):
    files, _ = images
    body, content_type = multipart([("a.jpg", files["a.jpg"])] * 8)
    with posting(server, body, content_type, clients=6):
        time.sleep(0.5)
        worst = 0.0
        for _ in range(10):
            start = time.perf_counter()
            assert server.get("v2/health/live")[0] == 200
            worst = max(worst, time.perf_counter() - start)
    assert worst < 1.0  # the event loop never waits for the model


@pytest.mark.slow
def test_sigterm_finishes_the_requests_in_flight_and_exits_0(run, images):
    files, _ = images
    body, content_type = multipart([("a.jpg", files["a.jpg"])] * 16)
    with running_server(run, "--max-batch", "4") as s:
        with ThreadPoolExecutor(6) as pool:
            jobs = [pool.submit(s.post, "predict", body, content_type) for _ in range(6)]
            time.sleep(0.3)  # they are in flight now
            s.process.send_signal(15)
            answers = [j.result() for j in jobs]
        assert s.process.wait(60) == 0
    assert [a[0] for a in answers] == [200] * 6
    log = "\n".join(s.stderr)
    assert log.count('"POST /predict" 200') == 6  # one log line per request


# A line of the service's own log: its time, then "ready: ..." or one request's line.
OUR_LOG_LINE = re.compile(r'\d{4}-\d\d-\d\d [\d:,]+ (ready: |127\.0\.0\.1 "[A-Z]+ /)')


@pytest.mark.slow
def test_onnx_runtime_serves_the_same_predictions_and_quietly(run, images, capsys):
    files, root = images
    body, content_type = multipart([("a.jpg", files["a.jpg"])])
    with running_server(run, "--runtime", "onnx") as s:
        assert s.json("model")["runtime"] == "onnx"
        status, answer, _ = s.post("predict?k=10", body, content_type)
    assert status == 200
    # The export before serving: no library's INFO chatter ("Replaced initializer ..." from
    # the ONNX optimiser, some 75 lines), only the service's own lines.
    assert [line for line in s.stderr if not OUR_LOG_LINE.match(line)] == []
    got = {p["class"]: p["probability"] for p in json.loads(answer)[0]["predictions"]}
    capsys.readouterr()
    assert cli.main(["predict", str(run), str(root / "a.jpg"), "-k", "10", "--json"]) == 0
    want = json.loads(capsys.readouterr().out)["predictions"]
    assert all(abs(got[p["class"]] - p["probability"]) < 1e-4 for p in want)


@pytest.mark.slow
def test_the_onnx_export_for_serving_is_quiet_unless_debug(run, caplog):
    """The ONNX optimiser's INFO lines stay out of a log that shows INFO (as a notebook's
    logging.basicConfig(level=INFO) does), and come back with our loggers at DEBUG (--debug)."""
    import cifar100
    from cifar100.serve.process import _as_onnx

    model = cifar100.load(run, device="cpu")

    def optimiser_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.startswith("onnx")]

    caplog.set_level(logging.INFO)
    assert _as_onnx(model).runtime == "onnx"
    assert optimiser_lines() == []
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="cifar100")
    _as_onnx(model)
    assert any(line.startswith("Replaced initializer") for line in optimiser_lines())


@pytest.mark.slow
def test_a_bad_model_or_a_taken_port_is_one_line(tmp_path, run):
    def serve(*argv):
        return subprocess.run([sys.executable, "-m", "cifar100", "serve", *argv],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    missing = serve(str(tmp_path / "nothing"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = serve(str(run), "--port", str(port))
    assert busy.returncode == 2 and "cannot listen on 127.0.0.1" in busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_model_that_fails_is_a_json_500_and_never_ready(run, images):
    from starlette.testclient import TestClient

    import cifar100
    from cifar100.serve.app import create_app

    model = cifar100.load(run, device="cpu")

    def broken(batch):
        raise RuntimeError("the model broke")

    model._batches = broken
    files, _ = images
    with TestClient(create_app(model), raise_server_exceptions=False) as client:
        time.sleep(0.2)  # the warm-up has failed by now
        assert client.get("/v2/health/ready").status_code == 503
        answer = client.post("/predict", files={"file": ("a.jpg", files["a.jpg"])})
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error: RuntimeError: the model broke"}
