"""`cifar100 serve --workers 2`: two processes, each with its model, one port, one service:
the same answers, metrics counted across both, ready only while both are warm (a killed worker
is replaced), and SIGTERM drains both."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve_server import multipart, running_server
from test_serve import images, predict_cli  # noqa: F401 - the fixture, shared


@pytest.fixture(scope="module")
def run(tiny_run_copy):
    return tiny_run_copy


def workers_of(pid: int) -> list[int]:
    """The worker processes of a `serve --workers` process (not multiprocessing's helpers)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    found = []
    for child in map(int, children.stdout.split()):
        command = open(f"/proc/{child}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        if "spawn_main" in command and "resource_tracker" not in command:
            found.append(child)
    return found


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.split("{")[0].split()[0] != name or line.startswith("#"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


@pytest.mark.slow
def test_two_workers_serve_as_one(run, images, capsys):  # noqa: F811
    files, root = images
    body, content_type = multipart([("a.jpg", files["a.jpg"])])
    want = predict_cli(run, [root / "a.jpg"], capsys)[0]["predictions"]
    with running_server(run, "--workers", "2") as s:
        assert len(workers_of(s.process.pid)) == 2
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: s.post("predict", body, content_type), range(40)))
        assert {a[0] for a in answers} == {200}
        assert all(json.loads(a[1])[0]["predictions"] == want for a in answers)
        # /metrics, whichever worker answers it, counts the requests of both. A request is
        # counted as its response ends, which may be just after the client has read it: on a
        # loaded machine the last count can land a moment later, so wait for it first.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = s.get("metrics")[1].decode()
            if counter(text, "cifar100_requests_total", route="/predict", status="200") == 40:
                break
            time.sleep(0.2)
        for _ in range(4):
            text = s.get("metrics")[1].decode()
            assert counter(text, "cifar100_requests_total", route="/predict", status="200") == 40
            assert counter(text, "cifar100_images_total") == 40
        served_by = {m[1] for line in s.stderr if (m := re.search(r"worker-(\d) .*/predict", line))}
        assert served_by == {"0", "1"}, "both workers answered requests"
        # /explain: each worker explains with its own PyTorch model
        with ThreadPoolExecutor(4) as pool:
            explained = list(pool.map(lambda _: s.post("explain", body, content_type), range(8)))
        assert {a[0] for a in explained} == {200}
        assert {json.loads(a[1])[0]["class"] for a in explained} == {want[0]["class"]}
    assert s.returncode == 0


@pytest.mark.slow
def test_ready_only_while_every_worker_is_warm(run):
    with running_server(run, "--workers", "2") as s:
        first, second = workers_of(s.process.pid)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while s.get("v2/health/ready")[0] == 200:  # until the supervisor sees it gone
            assert time.monotonic() < deadline, "still ready with a worker dead"
            time.sleep(0.05)
        deadline = time.monotonic() + 120
        while s.get("v2/health/ready")[0] != 200:  # a new worker loads and warms up
            assert time.monotonic() < deadline, s.stderr[-10:]
            time.sleep(0.2)
        workers = workers_of(s.process.pid)
        assert second in workers and first not in workers and len(workers) == 2
        assert any("died" in line and "starting another" in line for line in s.stderr)
    assert s.returncode == 0


@pytest.mark.slow
def test_sigterm_drains_every_worker(run, images):  # noqa: F811
    files, _ = images
    body, content_type = multipart([("a.jpg", files["a.jpg"])] * 16)
    with running_server(run, "--workers", "2", "--max-batch", "4") as s:
        with ThreadPoolExecutor(8) as pool:
            jobs = [pool.submit(s.post, "predict", body, content_type) for _ in range(8)]
            time.sleep(0.3)
            s.process.send_signal(signal.SIGTERM)
            statuses = [j.result()[0] for j in jobs]
        assert s.process.wait(60) == 0
    assert statuses == [200] * 8
    log = "\n".join(s.stderr)
    assert log.count('"POST /predict" 200') == 8 and "Traceback" not in log


@pytest.mark.slow
def test_a_model_that_cannot_load_is_one_line_with_workers(tmp_path):
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "cifar100", "serve", str(tmp_path / "nothing"), "--port", "0",
         "--workers", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "nothing" in lines[0], done.stderr


@pytest.mark.slow
def test_what_exists_after_warm_up_is_out_of_the_collectors_sight(run):
    """Full garbage collections walked every object of torch, FastAPI and the model (70-140 ms
    here, 250-300 ms under load, once a second); frozen after the warm-up, they walk only what
    came since."""
    import gc

    from starlette.testclient import TestClient

    import cifar100
    from cifar100.serve.app import create_app

    gc.unfreeze()
    model = cifar100.load(run, device="cpu")
    with TestClient(create_app(model)) as client:
        deadline = time.monotonic() + 60
        while client.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        frozen, tracked = gc.get_freeze_count(), len(gc.get_objects())
    gc.unfreeze()
    assert frozen > 10 * tracked, (frozen, tracked)
