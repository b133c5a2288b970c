"""A real `cifar100 serve` process on 127.0.0.1 for tests, on a free port, stopped by SIGTERM.

with running_server(run_dir, "--max-batch", "8") as server:
    urllib.request.urlopen(server.url + "v2/health/ready")
assert server.returncode == 0          # SIGTERM finished the requests in flight
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT/
    process: subprocess.Popen
    stderr: list[str] = field(default_factory=list)  # the server's log lines so far
    returncode: int | None = None

    def get(self, path: str, timeout: float = 30) -> tuple[int, bytes, dict]:
        return request(self.url + path.lstrip("/"), timeout=timeout)

    def post(self, path: str, body: bytes, content_type: str, timeout: float = 60, **headers):
        return request(self.url + path.lstrip("/"), body, {"Content-Type": content_type,
                                                           **headers}, timeout)  # fmt: skip

    def json(self, path: str) -> object:
        status, body, _ = self.get(path)
        assert status == 200, (status, body)
        return json.loads(body)


def request(url: str, body: bytes | None = None, headers: dict | None = None, timeout=30):
    """(status, body, headers) of one HTTP request; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read(), dict(e.headers)


@contextlib.contextmanager
def posting(server: Server, body: bytes, content_type: str, clients: int) -> Iterator[None]:
    """`clients` threads POSTing `body` to /predict again and again until the block ends."""
    stop = threading.Event()

    def post() -> None:
        while not stop.is_set():
            server.post("predict", body, content_type)

    threads = [threading.Thread(target=post) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(60)


def multipart(files: list[tuple[str, bytes]], field_name: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body of (filename, bytes) files, and its content type."""
    boundary = "cifar100-test-boundary-7d1e"
    parts = []
    for name, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


@contextlib.contextmanager
def running_server(model, *options: str, ready_timeout: float = 120) -> Iterator[Server]:
    """`cifar100 serve MODEL --port 0 OPTIONS` until the block ends, then SIGTERM."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifar100", "serve", str(model), "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    server = Server("", proc)
    threading.Thread(target=_collect, args=(proc.stderr, server.stderr), daemon=True).start()
    try:
        line = proc.stdout.readline()
        found = re.search(r"at (http://\S+/) ", line)
        if not found:
            proc.wait(30)
            raise AssertionError(f"no URL from cifar100 serve: {line!r} {server.stderr}")
        server.url = found[1]
        deadline = time.monotonic() + ready_timeout
        while request(server.url + "v2/health/ready")[0] != 200:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"not ready: {server.stderr}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.returncode = proc.returncode


def _collect(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))
