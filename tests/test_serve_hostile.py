"""`cifar100 serve` against hostile clients, each test a real server process on 127.0.0.1: heads
and bodies that never end, images cheap to send and dear to decode, bursts of large uploads,
JSON nesting bombs, and the small refusals, each one clear line in the service's own shape."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_server import multipart, posting, request, running_server


@pytest.fixture(scope="module")
def run(tiny_run_copy):
    return tiny_run_copy


@pytest.fixture(scope="module")
def server(run):
    options = ["--head-timeout", "2", "--body-timeout", "2", "--max-head-kb", "16"]
    with running_server(run, *options) as s:
        yield s
    assert s.returncode == 0
    assert not [line for line in s.stderr if "Traceback" in line], s.stderr


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text)[1]) / 1024


def connect(url: str) -> socket.socket:
    host, port = re.search(r"//([\d.]+):(\d+)/", url).groups()
    return socket.create_connection((host, int(port)), timeout=10)


def answer(sock: socket.socket, wait: float = 10) -> tuple[int, dict | None, bool]:
    """(status, JSON body, whether the server closed the connection) of what comes back: one
    whole response, then a moment to see whether the connection is closed after it."""
    sock.settimeout(wait)
    data, closed = b"", False
    try:
        while not _whole(data):
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
        if not closed:
            sock.settimeout(0.5)
            closed = sock.recv(65536) == b""
    except TimeoutError:
        pass
    except ConnectionResetError:
        closed = True
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head else 0
    return status, json.loads(body) if body else None, closed


def _whole(data: bytes) -> bool:
    head, found, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: (\d+)", head)
    return bool(found and length and len(body) >= int(length[1]))


def send_forever(sock: socket.socket, piece: bytes, limit_bytes: int) -> int:
    """Send `piece` again and again until the server stops reading (or `limit_bytes`)."""
    sent = 0
    try:
        while sent < limit_bytes:
            sock.sendall(piece)
            sent += len(piece)
    except OSError:  # the server refused and closed: what it should do
        pass
    return sent


# 1. A request head has a size limit and a time limit; memory stays bounded whatever is sent.


@pytest.mark.slow
def test_an_endless_head_is_refused_with_431_and_memory_stays_bounded(server):
    pid = server.process.pid
    before = rss_mb(pid)
    for start, piece in [
        (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n", b"X-Endless: " + b"a" * 1000 + b"\r\n"),
        (b"GET /", b"a" * 1000),  # a URL that never ends
        (b"GET / HTTP/1.1\r\nX-Long: ", b"b" * 4096),  # one header line that never ends
    ]:
        socks = [connect(server.url) for _ in range(2)]
        for s in socks:
            s.sendall(start)
        threads = [threading.Thread(target=send_forever, args=(s, piece, 200 << 20)) for s in socks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for s in socks:
            status, body, closed = answer(s)
            assert status == 431 and closed, (start, status)
            assert "--max-head-kb" in body["error"]
            s.close()
    assert rss_mb(pid) - before < 50  # it was 3.4 GB and climbing before the limit
    assert server.get("v2/health/ready")[0] == 200


@pytest.mark.slow
def test_a_head_that_never_ends_in_time_is_refused_with_408(server):
    s = connect(server.url)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # and then nothing
    start = time.monotonic()
    status, body, closed = answer(s, 15)
    assert status == 408 and closed and "--head-timeout" in body["error"]
    assert 1.5 < time.monotonic() - start < 6
    silent = connect(server.url)  # a connection that never says anything is closed too
    assert answer(silent, 15)[2]


def test_a_normal_head_with_long_headers_under_the_limit_is_served(server):
    s = connect(server.url)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"c" * 12000 + b"\r\n\r\n")
    s.settimeout(10)
    assert s.recv(100).startswith(b"HTTP/1.1 200")


# 5. A body has a time limit: a slow body, or a Content-Length larger than the body.


@pytest.mark.slow
@pytest.mark.parametrize("trickle", [True, False], ids=["one-byte-a-second", "short-body"])
def test_a_body_that_does_not_arrive_in_time_gets_408(server, trickle):
    s = connect(server.url)
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
              b"Content-Length: 1000\r\n\r\nab")  # fmt: skip
    start = time.monotonic()
    if trickle:
        try:
            for _ in range(8):
                time.sleep(1)
                s.sendall(b"x")
        except OSError:
            pass
    status, body, closed = answer(s, 15)
    assert status == 408 and closed and "--body-timeout" in body["error"]
    assert time.monotonic() - start < 5
    assert '"POST /predict" 408' in "\n".join(server.stderr[-20:])


@pytest.mark.slow
def test_sigterm_does_not_wait_for_a_slow_body(run):
    with running_server(run) as s:  # the default body timeout, 30 s
        slow = connect(s.url)
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 1000\r\n\r\nab")  # fmt: skip
        time.sleep(0.5)
        start = time.monotonic()
        s.process.send_signal(signal.SIGTERM)
        status, body, closed = answer(slow, 20)
        assert s.process.wait(30) == 0
        assert time.monotonic() - start < 5  # it waited 30 s, then logged a CancelledError
    assert status == 503 and "shutting down" in body["error"]
    log = "\n".join(s.stderr)
    assert "Traceback" not in log and "CancelledError" not in log


# 2. Images cheap to send but dear to decode: a pixel budget per request, checked before any
#    is decoded; decoding off the event loop, whose health and metrics answers stay fast.


def one_bit_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def test_many_images_that_declare_many_pixels_are_refused_before_decoding(server):
    bomb = one_bit_png(5000)  # 3 KB on the wire, 25 million pixels
    assert len(bomb) < 5000
    body, content_type = multipart([(f"{i}.png", bomb) for i in range(20)])
    start = time.monotonic()
    status, raw, _ = server.post("predict", body, content_type)
    assert status == 413 and time.monotonic() - start < 1.0  # not 6 s of decoding
    message = json.loads(raw)["error"]
    assert "500000000 pixels" in message and "--max-request-pixels" in message
    status, raw, _ = server.post("explain", body, content_type)  # bounded alike
    assert status == 413 and "--max-request-pixels" in json.loads(raw)["error"]


@pytest.mark.slow
def test_health_and_metrics_answer_fast_while_images_are_decoded(server):
    # Each request: two 5000x5000 images, inside the budget, about 0.3 s each to decode.
    body, content_type = multipart([(f"{i}.png", one_bit_png(5000)) for i in range(2)])
    with posting(server, body, content_type, clients=4):
        time.sleep(1.0)  # decoding in full swing
        times = []
        for i in range(20):
            path = "v2/health/ready" if i % 2 else "metrics"
            start = time.perf_counter()
            assert server.get(path, timeout=5)[0] == 200
            times.append(time.perf_counter() - start)
            time.sleep(0.05)
    assert max(times) < 0.1, sorted(times)[-5:]


# 3. Concurrent uploads: the bytes held at once across requests have a budget (503 beyond it),
#    and the memory a burst took is handed back once it is over.


@pytest.mark.slow
def test_a_burst_of_large_uploads_is_bounded_and_its_memory_returned(run):
    size = 12 << 20  # under the 16 MB body limit
    with running_server(run, "--max-inflight-mb", "64") as s:
        pid = s.process.pid
        before = rss_mb(pid)
        peak = [before]
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set():
                peak[0] = max(peak[0], rss_mb(pid))
                time.sleep(0.02)

        def upload(_) -> tuple[int, dict]:
            with connect(s.url) as c:
                c.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                          b"Content-Length: %d\r\n\r\n" % size)  # fmt: skip
                try:
                    for _ in range(size >> 20):
                        c.sendall(b"\x89PNG" * (1 << 18))
                except OSError:
                    pass
                status, body, _ = answer(c, 30)
                return status, body

        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(upload, range(40)))
        time.sleep(1.0)  # the last requests' memory is handed back once they are done
        watching.set()
        watcher.join()
        after = rss_mb(pid)
        assert s.get("v2/health/ready")[0] == 200
    statuses = {a[0] for a in answers}
    assert statuses <= {422, 503} and 503 in statuses, statuses
    busy = next(a[1] for a in answers if a[0] == 503)
    assert "--max-inflight-mb" in busy["error"]
    # 40 x 12 MB = 480 MB sent at once; the budget holds 64 MB of bodies (plus their copies)
    assert peak[0] - before < 300, (before, peak[0])
    assert after - before < 60, (before, peak[0], after)  # 2.08 GB stayed, before the fix


# 4. and 6. The client's mistakes are the client's: 4xx, one line, {"error": ...}


def test_a_json_nesting_bomb_is_a_400(server):
    bomb = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, raw, _ = server.post("v2/models/cifar100/infer", bomb, "application/json")
    assert status == 400 and "nested too deeply" in json.loads(raw)["error"]
    index = b"[" * 100_000 + b"]" * 100_000
    assert server.post("v2/repository/index", index, "application/json")[0] == 400


def test_a_large_json_part_is_refused_before_it_is_parsed(server):
    n = 100 * 32 * 32 * 3
    data = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8",
                                   "shape": [100, 32, 32, 3], "data": [255] * n}]})  # fmt: skip
    assert len(data) > 1 << 20
    status, raw, _ = server.post("v2/models/cifar100/infer", data.encode(), "application/json")
    assert status == 413 and "--max-json-mb" in json.loads(raw)["error"]


def test_small_refusals_are_in_the_documented_shape(server):
    png = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(png, "PNG")
    png = png.getvalue()
    body, content_type = multipart([("x.png", png)] * 1000)
    status, raw, _ = server.post("predict", body, content_type)
    assert status == 413 and json.loads(raw)["error"].startswith("1000 images in one request")
    for k in ["0", "-1", "1001", "abc"]:
        status, raw, _ = server.post(f"predict?k={k}", png, "image/png")
        error = json.loads(raw)["error"]
        assert status == 422 and error.startswith("k: ") and "\n" not in error, (k, raw)
    for path, status in [("nothing", 404), ("predict", 405)]:
        got, raw, _ = server.get(path)
        assert got == status and set(json.loads(raw)) == {"error"}
    long_name = "n" * 5000 + ".png"
    body, content_type = multipart([(long_name, png)])
    status, raw, _ = server.post("predict", body, content_type)
    assert status == 200 and json.loads(raw)[0]["path"] == long_name
    body, content_type = multipart([("x.png", png)])
    cut = body[: body.rindex(b"\r\n--")]  # no closing boundary
    status, raw, _ = server.post("predict", cut, content_type)
    assert status == 400 and "closing boundary" in json.loads(raw)["error"]


@pytest.mark.slow
def test_a_client_that_leaves_mid_body_is_no_error_of_ours(server):
    s = connect(server.url)
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
              b"Content-Length: 100000\r\n\r\n" + b"x" * 50_000)  # fmt: skip
    time.sleep(0.3)
    s.close()
    time.sleep(0.5)
    assert request(server.url + "v2/health/ready")[0] == 200
    assert not [line for line in server.stderr if "Traceback" in line or "failed" in line]


@pytest.mark.slow
def test_a_budget_smaller_than_one_body_is_refused_at_start(run):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "cifar100", "serve", str(run), "--port", "0",
         "--max-inflight-mb", "8", "--max-request-mb", "16"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "--max-inflight-mb 8 is less than" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_path_cannot_forge_a_log_line(server):
    server.get("nothing%0A2026-01-01%2000:00:00,000%20127.0.0.1%20%22GET%20/forged%22%20200")
    time.sleep(0.2)
    assert not [line for line in server.stderr if "/forged" in line and "nothing" not in line]
    assert any("nothing\\n2026" in line for line in server.stderr)
